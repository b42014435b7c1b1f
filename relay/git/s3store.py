"""The S3 object store: signed httpx requests, conditional writes, typed classification.

2xx, 412 and 404 are outcomes; 403, 5xx, other statuses and a successful write without an
ETag are backend errors; no HTTP answer at all is a transport error. The ETag is echoed
byte for byte, quotes included. Transport failures of reads and immutable (create-only)
writes are retried; pointer replacements never are.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import trio

from relay.git.objectstore import (
    BackendError,
    CasResult,
    Found,
    Listed,
    LostRace,
    TooLarge,
    TransportError,
    Won,
)
from relay.git.sigv4 import Credentials, encode_key_path, sign_request

log = logging.getLogger(__name__)

TRANSPORT_ERRORS = (httpx.TransportError, httpx.TimeoutException)
RETRY_DELAYS = (0.1, 0.4)


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint: str  # e.g. http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com
    bucket: str
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    addressing: str = "path"  # "path" or "virtual"
    timeout_seconds: float = 30.0


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _listing(body: bytes) -> tuple[list[Listed], str | None]:
    """The objects of one ListObjectsV2 page, and the token of the next page if any."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise BackendError(f"LIST: the answer is not XML: {exc}") from None
    items = []
    for contents in root.iter(f"{_S3_NS}Contents"):
        key = contents.findtext(f"{_S3_NS}Key")
        modified = contents.findtext(f"{_S3_NS}LastModified")
        size = contents.findtext(f"{_S3_NS}Size")
        if key is None or modified is None or size is None:
            raise BackendError("LIST: an entry without Key, LastModified or Size")
        when = datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
        items.append(Listed(key, when, int(size)))
    truncated = root.findtext(f"{_S3_NS}IsTruncated") == "true"
    return items, root.findtext(f"{_S3_NS}NextContinuationToken") if truncated else None


class S3Store:
    def __init__(self, config: S3Config, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_seconds),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._credentials = (
            Credentials(config.access_key, config.secret_key)
            if config.access_key and config.secret_key
            else None
        )

    def url(self, key: str | None = None) -> str:
        endpoint = httpx.URL(self.config.endpoint)
        path = "/" + encode_key_path(key) if key else "/"
        if self.config.addressing == "virtual":
            host = f"{self.config.bucket}.{endpoint.host}"
            return str(endpoint.copy_with(host=host, path=path))
        bucket_path = f"/{self.config.bucket}" + ("" if path == "/" else path)
        return str(endpoint.copy_with(path=bucket_path))

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        retry: bool,
        stream: bool = False,
    ) -> httpx.Response:
        attempts = len(RETRY_DELAYS) + 1 if retry else 1
        for attempt in range(attempts):
            all_headers = dict(headers or {})
            if self._credentials is not None:
                all_headers.update(
                    sign_request(
                        method,
                        url,
                        {**all_headers, "host": httpx.URL(url).netloc.decode()},
                        hashlib.sha256(body).hexdigest(),
                        self._credentials,
                        self.config.region,
                    )
                )
            request = self._client.build_request(method, url, content=body, headers=all_headers)
            try:
                return await self._client.send(request, stream=stream)
            except TRANSPORT_ERRORS as exc:
                if attempt + 1 >= attempts:
                    raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
                log.warning("retrying %s %s after %s", method, url, type(exc).__name__)
                await trio.sleep(RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    async def get(self, key: str, max_bytes: int | None = None) -> Found | None:
        response = await self._send("GET", self.url(key), retry=True, stream=True)
        try:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise BackendError(f"GET {key}: HTTP {response.status_code}")
            etag = response.headers.get("etag")
            if not etag:
                raise BackendError(f"GET {key}: no ETag in the answer")
            declared = response.headers.get("content-length")
            if max_bytes is not None and declared is not None and int(declared) > max_bytes:
                raise TooLarge(f"{key} is {declared} bytes, more than {max_bytes}")
            body = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if max_bytes is not None and len(body) > max_bytes:
                        raise TooLarge(f"{key} is larger than {max_bytes} bytes")
            except TRANSPORT_ERRORS as exc:
                raise TransportError(f"GET {key}: body not received: {exc}") from exc
            return Found(bytes(body), etag)
        finally:
            await response.aclose()

    async def put(self, key: str, body: bytes, if_match: str | None) -> CasResult:
        condition = {"If-None-Match": "*"} if if_match is None else {"If-Match": if_match}
        response = await self._send(
            "PUT", self.url(key), body, condition, retry=if_match is None
        )
        status = response.status_code
        if 200 <= status < 300:
            etag = response.headers.get("etag")
            if not etag:
                raise BackendError(f"PUT {key}: HTTP {status} without an ETag")
            return Won(etag)
        # 412: the condition failed. 409: a concurrent conditional write to the same key
        # (S3 ConditionalRequestConflict). 404 on If-Match: the object is gone. None of these
        # wrote our bytes.
        if status == 412 or status == 409 or (status == 404 and if_match is not None):
            return LostRace()
        raise BackendError(f"PUT {key}: HTTP {status}")

    async def delete(self, key: str) -> None:
        response = await self._send("DELETE", self.url(key), retry=True)
        if response.status_code not in (200, 204, 404):
            raise BackendError(f"DELETE {key}: HTTP {response.status_code}")

    async def list(self, prefix: str) -> list[Listed]:
        """ListObjectsV2, page by page (1,000 keys a page)."""
        found: list[Listed] = []
        token: str | None = None
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if token is not None:
                query += f"&continuation-token={quote(token, safe='')}"
            response = await self._send("GET", f"{self.url()}?{query}", retry=True)
            if response.status_code != 200:
                raise BackendError(f"LIST {prefix}: HTTP {response.status_code}")
            page, token = _listing(response.content)
            found += page
            if token is None:
                return found

    async def create_bucket(self) -> None:
        """Create the bucket if missing (used for local and test servers)."""
        response = await self._send("PUT", self.url(), retry=True)
        if response.status_code not in (200, 409):
            raise BackendError(f"create bucket: HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()
