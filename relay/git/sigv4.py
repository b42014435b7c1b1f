"""AWS Signature Version 4 for S3 requests (Authorization header form), pure and without I/O.

The rules, as S3 applies them:

* URL path: the caller passes the path percent-encoded as it will be sent (build object URLs
  with `encode_key_path`). The canonical URI is that path with its escapes normalised once:
  `%XX` sequences are decoded and every byte is re-encoded with `uri_encode` (slashes kept).
  A path that is already correctly encoded is therefore used verbatim, a character the
  caller left raw (`$`, a space, non-ASCII) is encoded the way S3 encodes it, and nothing is
  ever double-encoded. S3 does not normalise `.`/`..` segments or repeated slashes, and
  neither does this module.
* Query string: each `name[=value]` pair is split on `&` and the first `=`, decoded the same
  way (a `+` is a literal plus, not a space: send spaces as `%20`) and re-encoded with `/`
  encoded; pairs are sorted by encoded name, then encoded value; a missing value is `name=`.
* Headers: every header passed in is signed, plus `host` (taken from the URL when absent),
  `x-amz-date` and `x-amz-content-sha256` (and `x-amz-security-token` with a session token).
  Names are lowercased, values trimmed with inner runs of whitespace collapsed to one space;
  repeated names (differing only in case) are joined with `,`. An `Authorization` header
  passed in is ignored, and the `x-amz-*` headers this module sets replace any passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_to_bytes, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TERMINATOR = "aws4_request"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_SET_BY_SIGNER = frozenset(
    {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        token = "None" if self.session_token is None else "'***'"
        return (
            f"Credentials(access_key={self.access_key!r}, secret_key='***', session_token={token})"
        )


def _encode_bytes(data: bytes, encode_slash: bool) -> str:
    out: list[str] = []
    for byte in data:
        if byte in _UNRESERVED or (byte == 0x2F and not encode_slash):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def uri_encode(value: str, encode_slash: bool) -> str:
    """RFC 3986 encoding as SigV4 wants it: A-Z a-z 0-9 - _ . ~ kept, every other byte of the
    UTF-8 form as %XX (uppercase hex); `/` is kept unless `encode_slash`. `%` is encoded too,
    so this is for raw (unencoded) values only."""
    return _encode_bytes(value.encode("utf-8"), encode_slash)


def encode_key_path(key: str) -> str:
    """An S3 object key encoded for the path of a URL: each segment URI-encoded, `/` kept."""
    return uri_encode(key, encode_slash=False)


def _normalize_escapes(encoded: str, encode_slash: bool) -> str:
    # Decode %XX escapes (a `%` not followed by two hex digits stays literal), then re-encode.
    return _encode_bytes(unquote_to_bytes(encoded), encode_slash)


def canonical_uri(path: str) -> str:
    """The canonical URI of a path as sent (see the module rules); `/` for an empty path."""
    if not path:
        return "/"
    return _normalize_escapes(path, encode_slash=False)


def canonical_query_string(query: str) -> str:
    """The canonical form of a raw (as sent) query string, without the leading `?`."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_normalize_escapes(name, encode_slash=True), _normalize_escapes(value, True)))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _trimall(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical header block, signed header list) for exactly the headers given.

    The block is `name:value\\n` per header, sorted by lowercased name; the list is the names
    joined with `;`."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.strip().lower(), []).append(_trimall(value))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], payload_sha256: str
) -> str:
    """The canonical request for `url`, signing exactly `headers` (which must already hold
    host, x-amz-date and x-amz-content-sha256: `sign_request` adds them)."""
    parts = urlsplit(url)
    block, signed = canonical_headers(headers)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(parts.path),
            canonical_query_string(parts.query),
            block,
            signed,
            payload_sha256,
        ]
    )


def credential_scope(date: str, region: str, service: str) -> str:
    """`YYYYMMDD/region/service/aws4_request`."""
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The string to sign for an `x-amz-date` value (`YYYYMMDDTHHMMSSZ`), a credential scope
    and a canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day (`YYYYMMDD`), region and service."""
    k_date = _hmac(f"AWS4{secret}".encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, TERMINATOR)


def signature(key: bytes, to_sign: str) -> str:
    """The hex HMAC-SHA256 of the string to sign under a derived signing key."""
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def host_from_url(url: str) -> str:
    """The Host header value an HTTP client sends for `url`: the host in lowercase, with the
    port unless it is the scheme's default; no user info; IPv6 literals keep their brackets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    return host


def amz_date(moment: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y%m%dT%H%M%SZ")


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    service: str = "s3",
    now: datetime | None = None,
) -> dict[str, str]:
    """Returns the extra headers to add: Authorization, x-amz-date, x-amz-content-sha256 (and
    x-amz-security-token if a session token is set).

    `url` is the full URL as it will be sent, path percent-encoded (see `encode_key_path`);
    `headers` are the other headers that will be sent, all of which are signed, so the caller
    must send them unchanged (Host is taken from `url` when absent; the returned headers must
    replace any of the same names). `payload_sha256` is the hex SHA-256 of the body, or
    `UNSIGNED-PAYLOAD`. `now` defaults to the current time.
    """
    stamp = amz_date(now if now is not None else datetime.now(UTC))
    date = stamp[:8]
    added = {"x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
    if credentials.session_token is not None:
        added["x-amz-security-token"] = credentials.session_token

    to_sign: dict[str, str] = {}
    for name, value in headers.items():
        if name.strip().lower() not in _SET_BY_SIGNER:
            to_sign[name] = value
    if not any(name.strip().lower() == "host" for name in to_sign):
        to_sign["host"] = host_from_url(url)
    to_sign.update(added)

    canonical = canonical_request(method, url, to_sign, payload_sha256)
    _, signed_headers = canonical_headers(to_sign)
    scope = credential_scope(date, region, service)
    sig = signature(
        signing_key(credentials.secret_key, date, region, service),
        string_to_sign(stamp, scope, canonical),
    )
    authorization = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope},"
        f"SignedHeaders={signed_headers},Signature={sig}"
    )
    return {"Authorization": authorization, **added}
