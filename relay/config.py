"""One frozen settings object read from RELAY_* environment variables.

Every setting is declared once in `SETTINGS` (name, default, meaning, parser); `relay --help`
prints that table, and a bad value stops the relay with one line naming the setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.errors import EXIT_CONFIG, OperatorError, redact_urls
from relay.protocol.hosts import ALIAS_SEPARATOR, host_group
from relay.protocol.limits import Limits, Rate, RateLimits


class ConfigError(OperatorError, ValueError):
    """A setting has a value the relay cannot use; the message names the setting."""

    exit_status = EXIT_CONFIG
    prefix = "configuration error: "


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}, got {number}")
        return number

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value.lower()

    return parse


def _bool(value: str) -> bool:
    """on or off; true/false, yes/no and 1/0 are read as well (any case)."""
    lowered = value.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"must be on or off, got {value!r}")


def _text(value: str) -> str:
    return value


def _search_config(value: str) -> str:
    """NIP-50's text search configuration: `simple`, the one the search index is built with
    (sql/0006_events_search.sql); with another, every search would read the whole table."""
    if value.strip().lower() != "simple":
        raise ValueError(
            f"must be simple, got {value!r}: the search index is built for the simple"
            " configuration, and another one needs its own index"
        )
    return "simple"


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: those it may run on, fewer when its cgroup (a
    container's CPU limit) grants less time than that (`cpu.max`, rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return min(256, available_cpus())
    return _int_in(1, 256)(value)


def _bind(value: str) -> str:
    """An IPv4 or IPv6 address of this host to listen on (IPv6 with or without brackets)."""
    stripped = value.strip()
    bare = stripped[1:-1] if stripped.startswith("[") and stripped.endswith("]") else stripped
    try:
        return str(ip_address(bare))
    except ValueError:
        raise ValueError(
            f"must be an IP address to listen on (127.0.0.1, 0.0.0.0, ::1, ::), got {value!r}"
        ) from None


def _optional_text(value: str) -> str | None:
    return value or None


def _url(*schemes: str) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        if not value:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({redact_urls(str(exc))})") from None
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(
                f"must be a {' or '.join(schemes)} URL, got {redact_urls(value)!r}"
            )
        return value

    return parse


def _public_url(value: str) -> str:
    parsed = _url("ws", "wss")(value)
    if parsed is None or not urlsplit(parsed).hostname:
        raise ValueError(f"must be a ws:// or wss:// URL with a host, got {redact_urls(value)!r}")
    return parsed


def _hosts(value: str) -> tuple[str, ...]:
    """Communities, comma-separated; each `name|alias|...` (normalized). A name listed again
    is the first listing's (a community's names are never shared)."""
    groups: list[str] = []
    seen: set[str] = set()
    for item in value.split(","):
        if not item.strip():
            continue
        names = [name for name in host_group(item) if name not in seen]
        seen.update(names)
        if names:
            groups.append(ALIAS_SEPARATOR.join(names))
    if not groups:
        raise ValueError("must name at least one host")
    return tuple(groups)


def _networks(value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated IPv4 and IPv6 networks (CIDR); a bare address is a network of one."""
    networks = []
    for item in value.split(","):
        if not item.strip():
            continue
        try:
            networks.append(ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{item.strip()!r} is not an IP address or network (CIDR, e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _secret_key(value: str) -> str | None:
    if not value:
        return None
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise ValueError("must be 64 hex characters (a secp256k1 secret key)")
    return value.lower()


def _pubkeys(value: str) -> frozenset[str]:
    keys = [item.strip() for item in value.split(",") if item.strip()]
    for key in keys:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"{key!r} is not 64 lowercase hex characters (a pubkey)")
    return frozenset(keys)


def _pubkey(value: str) -> str | None:
    if not value:
        return None
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("must be 64 lowercase hex characters")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    field: str
    default: str
    help: str
    parse: Callable[[str], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("RELAY_BIND", "bind", "127.0.0.1",
            "IP address to listen on (0.0.0.0 or :: for every interface)", _bind),
    Setting("RELAY_PORT", "port", "7777", "TCP port to listen on (0 picks a free one)",
            _int_in(0, 65535)),
    Setting("RELAY_WORKERS", "workers", "1",
            "worker processes serving the one port (1-256, or auto: one per CPU this process"
            " may use, within its cgroup's CPU limit); more than 1 runs them under a"
            " supervising parent", _workers),
    Setting("RELAY_DATA_DIR", "data_dir", "./relay-data",
            "directory for the embedded database and the relay key", _text),
    Setting("RELAY_PUBLIC_URL", "public_url", "ws://localhost:7777",
            "the URL clients use to reach the relay", _public_url),
    Setting("RELAY_HOSTS", "hosts", "localhost|127.0.0.1|[::1]",
            "communities served, comma-separated; each is a host name, or several joined by |"
            " (name|alias|...: one community reached by every name)", _hosts),
    Setting("RELAY_DATABASE_URL", "database_url", "",
            "PostgreSQL URL; empty starts an embedded PostgreSQL in the data directory",
            _url("postgres", "postgresql")),
    Setting("RELAY_DB_POOL_SIZE", "db_pool_size", "10", "Postgres connections per process",
            _int_in(1, 200)),
    Setting("RELAY_SECRET_KEY", "secret_key", "",
            "relay signing key (hex); empty generates one kept in the data directory",
            _secret_key),
    Setting("RELAY_NAME", "name", "relay", "NIP-11 name", _text),
    Setting("RELAY_DESCRIPTION", "description", "A Nostr relay that hosts git repositories",
            "NIP-11 description", _text),
    Setting("RELAY_ADMIN_PUBKEY", "admin_pubkey", "",
            "NIP-11 pubkey of the operator (hex); empty uses the relay key", _pubkey),
    Setting("RELAY_ADMIN_PUBKEYS", "admin_pubkeys", "",
            "hex pubkeys (comma-separated) that administer every community over NIP-86",
            _pubkeys),
    Setting("RELAY_CONTACT", "contact", "", "NIP-11 contact", _optional_text),
    Setting("RELAY_LOG_LEVEL", "log_level", "info", "debug, info, warning or error",
            _choice("debug", "info", "warning", "error")),
    Setting("RELAY_LOG_FORMAT", "log_format", "text", "text or json (one JSON object a line)",
            _choice("text", "json")),
    Setting("RELAY_EXPIRATION_PURGE_SECONDS", "expiration_purge_seconds", "60",
            "how often expired events (NIP-40) are purged", _float_in(0.1, 86400)),
    Setting("RELAY_MAX_MESSAGE_BYTES", "max_message_bytes", "131072",
            "largest websocket message; larger closes the connection with 1009",
            _int_in(1024, 64 * 1024 * 1024)),
    Setting("RELAY_MAX_EVENT_BYTES", "max_event_bytes", "65536", "largest event (its JSON)",
            _int_in(256, 64 * 1024 * 1024)),
    Setting("RELAY_MAX_SUBSCRIPTIONS", "max_subscriptions", "200",
            "open subscriptions per connection", _int_in(1, 100_000)),
    Setting("RELAY_MAX_FILTERS", "max_filters", "10", "filters per REQ or COUNT",
            _int_in(1, 1000)),
    Setting("RELAY_MAX_LIMIT", "max_limit", "500", "clamp for a filter's limit",
            _int_in(1, 100_000)),
    Setting("RELAY_DEFAULT_LIMIT", "default_limit", "500",
            "limit of a filter that names none", _int_in(1, 100_000)),
    Setting("RELAY_MAX_EVENT_TAGS", "max_event_tags", "2000", "tags per event",
            _int_in(1, 1_000_000)),
    Setting("RELAY_MAX_TAG_VALUE_BYTES", "max_tag_value_bytes", "1024",
            "length of a single-letter tag's value", _int_in(64, 2048)),
    Setting("RELAY_MAX_SUBID_LENGTH", "max_subid_length", "64", "subscription id length",
            _int_in(1, 1024)),
    Setting("RELAY_MAX_AUTH_KEYS", "max_auth_keys", "8",
            "keys one connection may authenticate with NIP-42", _int_in(1, 1000)),
    Setting("RELAY_MAX_NEG_SESSIONS", "max_neg_sessions", "8",
            "NIP-77 negentropy sessions open at once on one connection", _int_in(1, 1000)),
    Setting("RELAY_NEG_MAX_RECORDS", "max_neg_records", "500000",
            "events one NIP-77 session may cover (NEG-ERR blocked: too many records beyond)",
            _int_in(1, 100_000_000)),
    Setting("RELAY_NEG_IDLE_SECONDS", "neg_idle_seconds", "60",
            "a NIP-77 session idle this long is closed", _float_in(1, 86400)),
    Setting("RELAY_NEG_FRAME_BYTES", "neg_frame_bytes", "60000",
            "largest negentropy message the relay sends, before hex (the NEG-MSG is about"
            " twice that)", _int_in(4096, 16 * 1024 * 1024)),
    Setting("RELAY_MAX_FILTER_VALUES", "max_filter_values", "1000",
            "values in one filter field (ids, authors, kinds, #x)", _int_in(1, 100_000)),
    Setting("RELAY_MAX_FUTURE_SECONDS", "max_future_seconds", "900",
            "how far in the future created_at may be", _int_in(0, 10 * 365 * 86400)),
    Setting("RELAY_REDIS_URL", "redis_url", "",
            "Redis for fan-out and shared rate limits between pods (required for more than one)",
            _url("redis", "rediss")),
    Setting("RELAY_REDIS_PREFIX", "redis_prefix", "relay",
            "prefix of every Redis channel and key", _text),
    Setting("RELAY_SHUTDOWN_GRACE", "shutdown_grace", "20",
            "seconds in-flight work may take to finish after SIGTERM", _float_in(0, 3600)),
    Setting("RELAY_RATE_LIMITS", "rate_limits", "on", "rate limits on or off", _bool),
    Setting("RELAY_RATE_EVENTS_PER_SECOND", "rate_events_per_second", "50",
            "EVENTs per second per IP and per authenticated pubkey", _float_in(0.01, 1e6)),
    Setting("RELAY_RATE_EVENTS_BURST", "rate_events_burst", "500", "EVENT burst",
            _int_in(1, 10_000_000)),
    Setting("RELAY_RATE_REQS_PER_SECOND", "rate_reqs_per_second", "20",
            "REQs, COUNTs and AUTHs per second per IP and per authenticated pubkey",
            _float_in(0.01, 1e6)),
    Setting("RELAY_RATE_REQS_BURST", "rate_reqs_burst", "200", "REQ burst",
            _int_in(1, 10_000_000)),
    Setting("RELAY_RATE_CONNECTIONS_PER_SECOND", "rate_connections_per_second", "10",
            "new websocket connections per second per IP", _float_in(0.01, 1e6)),
    Setting("RELAY_RATE_CONNECTIONS_BURST", "rate_connections_burst", "100",
            "connection burst", _int_in(1, 10_000_000)),
    Setting("RELAY_RATE_LIMIT_LOOPBACK", "rate_limit_loopback", "off",
            "rate-limit loopback clients (127.0.0.0/8, ::1) too; off exempts them (on or off)",
            _bool),
    Setting("RELAY_TRUSTED_PROXIES", "trusted_proxies", "",
            "comma-separated networks (CIDR) of reverse proxies whose Forwarded,"
            " X-Forwarded-For or X-Real-IP header names the client; empty trusts none",
            _networks),
    Setting("RELAY_CLIENT_ADDRESS_HEADER", "client_address_header", "auto",
            "which header of a trusted proxy names the client: auto (the first present of"
            " Forwarded, X-Forwarded-For, X-Real-IP) or the one the proxy writes",
            _choice("auto", "forwarded", "x-forwarded-for", "x-real-ip")),
    Setting("RELAY_S3_ENDPOINT", "s3_endpoint", "",
            "S3 endpoint URL for git objects; empty keeps them under the data directory",
            _url("http", "https")),
    Setting("RELAY_S3_BUCKET", "s3_bucket", "", "S3 bucket (required with an endpoint)",
            _optional_text),
    Setting("RELAY_S3_REGION", "s3_region", "us-east-1", "S3 region used in signatures", _text),
    Setting("RELAY_S3_ACCESS_KEY", "s3_access_key", "",
            "S3 access key; with no keys requests are unsigned", _optional_text),
    Setting("RELAY_S3_SECRET_KEY", "s3_secret_key", "", "S3 secret key", _optional_text),
    Setting("RELAY_S3_ADDRESSING", "s3_addressing", "path",
            "path (endpoint/bucket/key) or virtual (bucket.endpoint/key)",
            _choice("path", "virtual")),
    Setting("RELAY_S3_TIMEOUT_SECONDS", "s3_timeout_seconds", "30",
            "timeout of every object store request", _float_in(0.1, 600)),
    Setting("RELAY_GIT_PROBE", "git_probe", "on",
            "run the object store conformance probe at start-up (on or off)", _bool),
    Setting("RELAY_GIT_PROBE_WRITERS", "git_probe_writers", "32",
            "concurrent writers in each probe race", _int_in(2, 256)),
    Setting("RELAY_GIT_PROBE_ROUNDS", "git_probe_rounds", "3", "rounds of each probe race",
            _int_in(1, 100)),
    Setting("RELAY_GIT_PROBE_DEADLINE_SECONDS", "git_probe_deadline_seconds", "300",
            "the whole probe must finish within this time", _float_in(1, 3600)),
    Setting("RELAY_GIT_MAX_REPOS_PER_PUBKEY", "git_max_repos_per_pubkey", "100",
            "repo names one pubkey may hold in a community", _int_in(0, 1_000_000)),
    Setting("RELAY_GIT_RECONCILE_SECONDS", "git_reconcile_seconds", "300",
            "how often every hosted repo's relay-signed 30618 is checked against its pointer"
            " (and at start-up); 0 turns it off", _float_in(0, 86400)),
    Setting("RELAY_GIT_PROVISION", "git_provision", "listed",
            "which kind 30617 announcements get a hosted repository: listed (its clone tag"
            " lists this relay's git URL for it, as GRASP-01 asks) or any valid one",
            _choice("listed", "any")),
    Setting("RELAY_GIT_PURGATORY_SECONDS", "git_purgatory_seconds", "1800",
            "how long a maintainer's 30618 or a PR event waits for its git data before it is"
            " dropped", _float_in(1, 7 * 86400)),
    Setting("RELAY_GIT_PUBLIC_READ", "git_public_read", "true",
            "on: anyone may clone and fetch; off requires NIP-98 for reads too", _bool),
    Setting("RELAY_WEB_PAGES", "web_pages", "on",
            "on: browsers get the relay page at / and a page per hosted repository at its"
            " clone URL; off: they get the plain answers", _bool),
    Setting("RELAY_GIT_MAX_PACK_BYTES", "git_max_pack_bytes", "268435456",
            "largest pack one push may bring (HTTP 413 beyond)", _int_in(1024, 1 << 40)),
    Setting("RELAY_GIT_MAX_REPO_BYTES", "git_max_repo_bytes", "1073741824",
            "largest repository, all packs together (HTTP 413 beyond)", _int_in(1024, 1 << 42)),
    Setting("RELAY_GIT_MAX_PROCESSES", "git_max_processes", "8",
            "git operations at once per process (HTTP 503 beyond)", _int_in(1, 1024)),
    Setting("RELAY_GIT_TIMEOUT_SECONDS", "git_timeout_seconds", "300",
            "time one git subprocess may take (HTTP 504 beyond)", _float_in(1, 86400)),
    Setting("RELAY_GIT_SCRATCH_DIR", "git_scratch_dir", "",
            "where requests hydrate temporary repositories; empty uses the system temp dir",
            _text),
    Setting("RELAY_GIT_PACK_CACHE_BYTES", "git_pack_cache_bytes", "1073741824",
            "packs kept on the pod's disk (under the scratch dir) for the next request; 0 = off",
            _int_in(0, 1 << 44)),
    Setting("RELAY_GIT_AUTH_WINDOW_SECONDS", "git_auth_window_seconds", "60",
            "how old a NIP-98 token may be", _int_in(1, 3600)),
    Setting("RELAY_QUERY_TIMEOUT_SECONDS", "query_timeout_seconds", "2",
            "a REQ or COUNT query running longer is cancelled (CLOSED error: query too"
            " expensive)", _float_in(0.05, 600)),
    Setting("RELAY_INGEST_TIMEOUT_SECONDS", "ingest_timeout_seconds", "30",
            "deadline for storing one event with its side effects", _float_in(0.1, 3600)),
    Setting("RELAY_COMPENSATION_TIMEOUT_SECONDS", "compensation_timeout_seconds", "10",
            "time allowed to undo a failed side effect", _float_in(0.1, 3600)),
    Setting("RELAY_MAX_OUTBOUND_BYTES", "max_outbound_bytes", "16777216",
            "bytes queued for one slow client before it is disconnected",
            _int_in(64 * 1024, 1024 * 1024 * 1024)),
    Setting("RELAY_SEARCH_CONFIG", "search_config", "simple",
            "text search configuration of NIP-50 search (only simple: the index is built"
            " for it)", _search_config),
)


@dataclass(frozen=True, slots=True)
class Settings:
    bind: str
    port: int
    workers: int
    data_dir: str
    public_url: str
    hosts: tuple[str, ...]
    database_url: str | None
    db_pool_size: int
    secret_key: str | None
    name: str
    description: str
    admin_pubkey: str | None
    admin_pubkeys: frozenset[str]
    contact: str | None
    log_level: str
    log_format: str
    expiration_purge_seconds: float
    max_message_bytes: int
    max_event_bytes: int
    max_subscriptions: int
    max_filters: int
    max_limit: int
    default_limit: int
    max_event_tags: int
    max_tag_value_bytes: int
    max_subid_length: int
    max_auth_keys: int
    max_neg_sessions: int
    max_neg_records: int
    neg_idle_seconds: float
    neg_frame_bytes: int
    max_filter_values: int
    max_future_seconds: int
    redis_url: str | None
    redis_prefix: str
    shutdown_grace: float
    rate_limits: bool
    rate_events_per_second: float
    rate_events_burst: int
    rate_reqs_per_second: float
    rate_reqs_burst: int
    rate_connections_per_second: float
    rate_connections_burst: int
    rate_limit_loopback: bool
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
    client_address_header: str
    s3_endpoint: str | None
    s3_bucket: str | None
    s3_region: str
    s3_access_key: str | None
    s3_secret_key: str | None
    s3_addressing: str
    s3_timeout_seconds: float
    git_probe: bool
    git_probe_writers: int
    git_probe_rounds: int
    git_probe_deadline_seconds: float
    git_max_repos_per_pubkey: int
    git_public_read: bool
    web_pages: bool
    git_provision: str
    git_purgatory_seconds: float
    git_reconcile_seconds: float
    git_max_pack_bytes: int
    git_max_repo_bytes: int
    git_max_processes: int
    git_timeout_seconds: float
    git_scratch_dir: str
    git_auth_window_seconds: int
    git_pack_cache_bytes: int
    ingest_timeout_seconds: float
    query_timeout_seconds: float
    compensation_timeout_seconds: float
    max_outbound_bytes: int
    search_config: str

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def limits(self) -> Limits:
        names = {f.name for f in fields(Limits)}
        return Limits(**{n: getattr(self, n) for n in names if hasattr(self, n)})

    @property
    def rate(self) -> RateLimits:
        return RateLimits(
            enabled=self.rate_limits,
            events=Rate(self.rate_events_per_second, self.rate_events_burst),
            reqs=Rate(self.rate_reqs_per_second, self.rate_reqs_burst),
            connections=Rate(self.rate_connections_per_second, self.rate_connections_burst),
        )


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read every setting; `overrides` (by field name) win over the environment."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.field in overrides:
            values[setting.field] = overrides.pop(setting.field)
            continue
        raw = env.get(setting.env, setting.default)
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env} {exc}") from None
    if overrides:
        raise TypeError(f"unknown settings: {sorted(overrides)}")
    settings = Settings(**values)
    if settings.default_limit > settings.max_limit:
        raise ConfigError("RELAY_DEFAULT_LIMIT must not exceed RELAY_MAX_LIMIT")
    if bool(settings.s3_access_key) != bool(settings.s3_secret_key):
        raise ConfigError(
            "RELAY_S3_ACCESS_KEY and RELAY_S3_SECRET_KEY must be set together, or neither"
        )
    if settings.redis_url and not settings.secret_key:
        raise ConfigError(
            "RELAY_SECRET_KEY is required with RELAY_REDIS_URL: every pod must sign ref state "
            "with the same key"
        )
    if settings.s3_endpoint and not settings.s3_bucket:
        raise ConfigError("RELAY_S3_BUCKET is required when RELAY_S3_ENDPOINT is set")
    return settings


def settings_help() -> str:
    width = max(len(s.env) for s in SETTINGS)
    lines = ["settings (environment variables):"]
    for s in SETTINGS:
        default = s.default if s.default else "(empty)"
        lines.append(f"  {s.env.ljust(width)}  {s.help} [default: {default}]")
    return "\n".join(lines)
