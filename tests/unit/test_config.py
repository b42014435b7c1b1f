"""relay.config: settings read from RELAY_* variables, each bad value refused with a line
naming its variable, and the help text."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from relay.config import SETTINGS, ConfigError, available_cpus, load_settings, settings_help
from relay.protocol.limits import Limits


def test_default_settings() -> None:
    settings = load_settings({})
    assert settings.bind == "127.0.0.1"
    assert settings.port == 7777
    # One community by default, reached by every loopback name.
    assert settings.hosts == ("localhost|127.0.0.1|[::1]",)
    assert settings.public_url == "ws://localhost:7777"
    assert settings.database_url is None
    assert settings.secret_key is None
    assert settings.admin_pubkey is None
    assert settings.contact is None
    assert settings.log_level == "info"
    assert settings.log_format == "text"
    assert settings.db_pool_size == 10
    assert settings.expiration_purge_seconds == 60.0
    # The settings' defaults are the protocol's defaults.
    assert settings.limits == Limits()


def test_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "RELAY_PORT": "0",
            "RELAY_HOSTS": "Alpha.Test., alpha.test:80 ,,beta.test,[::1]:7777",
            "RELAY_DATABASE_URL": "postgresql://u:p@db.internal:5433/relay",
            "RELAY_LOG_LEVEL": "DEBUG",
            "RELAY_SECRET_KEY": "AB" * 32,
            "RELAY_MAX_LIMIT": "50",
            "RELAY_DEFAULT_LIMIT": "20",
            "RELAY_CONTACT": "",
        }
    )
    assert settings.port == 0
    assert settings.hosts == ("alpha.test", "beta.test", "[::1]")
    assert settings.database_url == "postgresql://u:p@db.internal:5433/relay"
    assert settings.log_level == "debug"
    assert settings.secret_key == "ab" * 32
    assert settings.limits.max_limit == 50
    assert settings.limits.default_limit == 20
    assert settings.contact is None


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings({"RELAY_PORT": "not a port"}, port=1234)
    assert settings.port == 1234
    with pytest.raises(TypeError, match="unknown settings"):
        load_settings({}, no_such_setting=1)


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("RELAY_PORT", "70000", "RELAY_PORT must be between 0 and 65535, got 70000"),
        ("RELAY_PORT", "-1", "RELAY_PORT must be between 0 and 65535, got -1"),
        ("RELAY_PORT", "http", "RELAY_PORT must be a whole number, got 'http'"),
        ("RELAY_PORT", "", "RELAY_PORT must be a whole number, got ''"),
        (
            "RELAY_DATABASE_URL",
            "postgres://db:notaport/relay",
            "RELAY_DATABASE_URL is not a valid URL",
        ),
        ("RELAY_DATABASE_URL", "postgresql://[::1/relay", "RELAY_DATABASE_URL is not a valid URL"),
        (
            "RELAY_DATABASE_URL",
            "mysql://db/relay",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL, got 'mysql://db/relay'",
        ),
        (
            "RELAY_DATABASE_URL",
            "db.internal:5432",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL",
        ),
        (
            "RELAY_DATABASE_URL",
            "postgres:",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL",
        ),
        (
            "RELAY_LOG_LEVEL",
            "verbose",
            "RELAY_LOG_LEVEL must be one of debug, info, warning, error, got 'verbose'",
        ),
        ("RELAY_LOG_FORMAT", "xml", "RELAY_LOG_FORMAT must be one of text, json, got 'xml'"),
        ("RELAY_HOSTS", "good.test,exa mple.com", "RELAY_HOSTS 'exa mple.com' is not a host name"),
        ("RELAY_HOSTS", "http://x.test", "RELAY_HOSTS 'http://x.test' is not a host name"),
        ("RELAY_HOSTS", " , ,", "RELAY_HOSTS must name at least one host"),
        ("RELAY_HOSTS", "", "RELAY_HOSTS must name at least one host"),
        (
            "RELAY_PUBLIC_URL",
            "https://x.test",
            "RELAY_PUBLIC_URL must be a ws or wss URL, got 'https://x.test'",
        ),
        ("RELAY_PUBLIC_URL", "wss://", "RELAY_PUBLIC_URL must be a ws or wss URL"),
        (
            "RELAY_PUBLIC_URL",
            "wss:///path",
            "RELAY_PUBLIC_URL must be a ws:// or wss:// URL with a host, got 'wss:///path'",
        ),
        ("RELAY_SECRET_KEY", "abc", "RELAY_SECRET_KEY must be 64 hex characters"),
        ("RELAY_ADMIN_PUBKEY", "AB" * 32, "RELAY_ADMIN_PUBKEY must be 64 lowercase hex"),
        ("RELAY_DB_POOL_SIZE", "0", "RELAY_DB_POOL_SIZE must be between 1 and 200, got 0"),
        (
            "RELAY_EXPIRATION_PURGE_SECONDS",
            "soon",
            "RELAY_EXPIRATION_PURGE_SECONDS must be a number, got 'soon'",
        ),
        (
            "RELAY_MAX_TAG_VALUE_BYTES",
            "4096",
            "RELAY_MAX_TAG_VALUE_BYTES must be between 64 and 2048, got 4096",
        ),
    ],
)
def test_bad_setting_names_the_setting(env: str, value: str, expected: str) -> None:
    message = config_error({env: value})
    assert message.startswith(expected), message


def test_default_limit_may_not_exceed_max_limit() -> None:
    assert config_error({"RELAY_MAX_LIMIT": "10", "RELAY_DEFAULT_LIMIT": "11"}) == (
        "RELAY_DEFAULT_LIMIT must not exceed RELAY_MAX_LIMIT"
    )
    assert load_settings({"RELAY_MAX_LIMIT": "10", "RELAY_DEFAULT_LIMIT": "10"}).default_limit == 10


def test_every_setting_is_read_from_its_variable() -> None:
    bad = "\x00bad\x00"
    for setting in SETTINGS:
        try:
            parsed = setting.parse(bad)
        except ValueError:
            # A value its parser rejects stops the relay with a line naming the variable.
            message = config_error({setting.env: bad})
            assert message.startswith(setting.env + " "), message
            continue
        # Free text: the value arrives in the settings (or a cross-check names the variable).
        try:
            settings = load_settings({setting.env: bad})
        except ConfigError as exc:
            assert setting.env in str(exc)
        else:
            assert getattr(settings, setting.field) == parsed == bad


def test_settings_help_mentions_every_variable() -> None:
    text = settings_help()
    for setting in SETTINGS:
        line = next(line for line in text.splitlines() if f" {setting.env} " in line)
        assert setting.help in line
        assert f"[default: {setting.default or '(empty)'}]" in line
    # ...and every RELAY_ variable the relay's code mentions is a documented setting.
    source = Path(__file__).resolve().parents[2] / "relay"
    mentioned = set()
    for path in source.rglob("*.py"):
        mentioned |= set(re.findall(r"\bRELAY_[A-Z0-9_]+\b", path.read_text("utf-8")))
    assert mentioned
    missing = {name for name in mentioned if not re.search(rf" {name} ", text)}
    assert missing == set()
    assert len(SETTINGS) == len({s.env for s in SETTINGS}) == len({s.field for s in SETTINGS})


def test_workers_auto_is_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert load_settings({"RELAY_WORKERS": "auto"}).workers == available_cpus()
    assert load_settings({}).workers == 1
    assert load_settings({"RELAY_WORKERS": "3"}).workers == 3
    with pytest.raises(ConfigError, match="RELAY_WORKERS"):
        load_settings({"RELAY_WORKERS": "0"})
    with pytest.raises(ConfigError, match="RELAY_WORKERS"):
        load_settings({"RELAY_WORKERS": "many"})
    cpu_max = tmp_path / "cpu.max"
    assert available_cpus(cpu_max) == cpus  # no cgroup file: every CPU it may run on
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == cpus
    cpu_max.write_text("50000 100000\n")  # half a CPU: one worker
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text(f"{150000 * cpus} 100000\n")  # more time than CPUs: the CPUs
    assert available_cpus(cpu_max) == cpus
