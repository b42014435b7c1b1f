"""What a starting relay says: data directory, database, object store, fan-out, URLs and
communities, and never a password."""

from __future__ import annotations

from pathlib import Path

from relay.config import load_settings
from relay.startup import startup_lines


def lines(env: dict[str, str]) -> str:
    settings = load_settings(env)
    communities = [["localhost", "127.0.0.1"], ["alpha.test"]]
    return "\n".join(startup_lines(settings, "127.0.0.1:7777", communities, "ab" * 32))


def test_the_embedded_defaults(tmp_path: Path) -> None:
    text = lines({"RELAY_DATA_DIR": str(tmp_path / "data")})
    assert f"data directory: {(tmp_path / 'data').resolve()}" in text
    assert f"database: embedded PostgreSQL in {(tmp_path / 'data' / 'postgres').resolve()}" in text
    assert f"git objects: directory {tmp_path / 'data' / 'objects'}" in text
    assert "events between pods: in this process only (no RELAY_REDIS_URL: a single pod)" in text
    assert "clients: ws://localhost:7777; git URLs: http://localhost:7777/<npub>/" in text
    assert "communities (2): localhost, 127.0.0.1; alpha.test" in text
    assert "relay listening on 127.0.0.1:7777 (pubkey " + "ab" * 32 + ")" in text


def test_servers_are_named_and_passwords_never_shown() -> None:
    text = lines({
        "RELAY_DATABASE_URL": "postgresql://relay:s3cret@db.internal:6432/relaydb",
        "RELAY_REDIS_URL": "redis://:hunter2@cache.internal:6379/0",
        "RELAY_S3_ENDPOINT": "https://s3.example.com", "RELAY_S3_BUCKET": "gitobjects",
        "RELAY_S3_ACCESS_KEY": "AKIA", "RELAY_S3_SECRET_KEY": "topsecret",
        "RELAY_PUBLIC_URL": "wss://relay.example.com", "RELAY_SECRET_KEY": "11" * 32,
    })  # fmt: skip
    assert "database: PostgreSQL at db.internal:6432, database relaydb" in text
    assert "events between pods: Redis at cache.internal:6379, channels relay:*" in text
    assert "gitobjects" in text and "https://s3.example.com" in text
    assert "git URLs: https://relay.example.com/<npub>/<repo>.git" in text
    for secret in ("s3cret", "hunter2", "topsecret", "AKIA", "11" * 32):
        assert secret not in text


def test_a_unix_socket_database_and_the_workers_fan_out_are_named() -> None:
    settings = load_settings({
        "RELAY_DATABASE_URL": "postgresql://postgres:pw@/postgres?host=/srv/relay/pg&port=5432",
    })  # fmt: skip
    text = "\n".join(startup_lines(settings, "127.0.0.1:7777", [["localhost"]], "ab" * 32, 4))
    assert "database: PostgreSQL on the unix socket in /srv/relay/pg, database postgres" in text
    assert "events between pods: the worker bus between this relay's 4 workers" in text
    assert ":pw@" not in text and "pw" not in text.split()
