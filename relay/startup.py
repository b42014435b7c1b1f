"""What a starting relay tells its operator: where its data lives, what it talks to, and
the URLs to hand out; never a password (servers are named by host, port and database, never
by their URL; a URL in an error goes through `errors.redact_urls`). Pure: settings and
names in, lines out."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from relay.config import Settings
from relay.git.stores import describe as describe_object_store
from relay.store.embedded import PGDATA


def database(settings: Settings) -> str:
    if not settings.database_url:
        return f"embedded PostgreSQL in {(settings.data_path / PGDATA).resolve()}"
    parts = urlsplit(settings.database_url)
    port = f":{parts.port}" if parts.port else ""
    name = parts.path.lstrip("/") or "(the user's default database)"
    if not parts.hostname:  # a unix socket, named in the query (`?host=/run/postgresql`)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "the default directory")
        return f"PostgreSQL on the unix socket in {socket_dir}, database {name}"
    return f"PostgreSQL at {parts.hostname}{port}, database {name}"


def fan_out(settings: Settings, workers: int = 1) -> str:
    if not settings.redis_url:
        if workers > 1:
            return f"the worker bus between this relay's {workers} workers (no RELAY_REDIS_URL)"
        return "in this process only (no RELAY_REDIS_URL: a single pod)"
    parts = urlsplit(settings.redis_url)
    port = f":{parts.port}" if parts.port else ""
    return f"Redis at {parts.hostname}{port}, channels {settings.redis_prefix}:*"


def git_base_url(settings: Settings) -> str:
    public = urlsplit(settings.public_url)
    scheme = "https" if public.scheme == "wss" else "http"
    return f"{scheme}://{public.netloc}/<npub>/<repo>.git"


def startup_lines(
    settings: Settings, bound: str, communities: list[list[str]], pubkey: str, workers: int = 1
) -> list[str]:
    """The lines logged once the relay listens on `bound` (address:port); by the first
    worker, when there are `workers` of them."""
    names = "; ".join(", ".join(group) for group in communities)
    return [
        f"relay listening on {bound} (pubkey {pubkey})",
        f"data directory: {settings.data_path.resolve()}",
        f"database: {database(settings)}",
        f"git objects: {describe_object_store(settings)}",
        f"events between pods: {fan_out(settings, workers)}",
        f"websocket URL for clients: {settings.public_url}; git URLs: {git_base_url(settings)}",
        f"communities ({len(communities)}): {names}",
    ]
