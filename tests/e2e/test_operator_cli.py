"""What an operator sees from `relay` when something is off: start-up failures as one line
and exit status 2 (passwords never shown), the data directory named when a command creates
it or finds no tables in it, import's exit status, on/off settings, every command's --help,
and progress on stderr for export, import and probe."""

from __future__ import annotations

import io
import os
import pty
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from relay.cli import COMMAND_SETTINGS, CannotListen, selects, settings_of, startup_error
from relay.config import SETTINGS, ConfigError, load_settings
from relay.errors import redact_urls
from relay.progress import Progress
from tests.helpers import RELAY_CLI, clean_environ, make_event
from tests.services import free_port

PASSWORD = "hunter2-not-for-logs"
SETTINGS_COMMANDS = ("serve", "migrate", "community", "export", "import", "probe", "gc")


def run_relay(
    args: list[str],
    env: dict[str, str],
    *,
    stdin: bytes = b"",
    cwd: Path | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*prefix, *RELAY_CLI, *args],
        env={**clean_environ(), "RELAY_LOG_LEVEL": "warning", **env},
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's only line on stderr (what the operator reads)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


# -- start-up failures: one line, exit status 2 --------------------------------------------


def test_a_port_in_use_is_one_line_naming_it(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_relay(
            ["serve"],
            {
                "RELAY_PORT": str(port),
                "RELAY_DATABASE_URL": db_url,
                "RELAY_DATA_DIR": str(tmp_path),
            },
        )
    assert result.returncode == 2
    assert one_line(result) == (
        f"relay: RELAY_PORT {port} is already in use on 127.0.0.1: another relay or program "
        "listens there; stop it or choose another port"
    )


async def test_a_port_taken_between_the_check_and_the_listener_is_the_same_error() -> None:
    """The listener's own failure (a port taken after the early check) reads the same."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings({"RELAY_PORT": str(port)})
        with pytest.raises(OSError) as raised:
            await trio.open_tcp_listeners(port, host="127.0.0.1")
    error = startup_error(ExceptionGroup("nursery", [raised.value]), settings)
    assert isinstance(error, CannotListen) and error.exit_status == 2
    assert str(error).startswith(f"RELAY_PORT {port} is already in use on 127.0.0.1")
    # The same errno raised anywhere else is not taken for the listener's.
    assert startup_error(OSError(98, "Address already in use"), settings) is None


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        (
            "not-an-ip",
            "relay: configuration error: RELAY_BIND must be an IP address to listen on "
            "(127.0.0.1, 0.0.0.0, ::1, ::), got 'not-an-ip'",
        ),
        (
            "192.0.2.1",  # TEST-NET-1: never an address of this host
            "relay: RELAY_BIND 192.0.2.1 is not an address of this host (0.0.0.0 or :: listen "
            "on every interface)",
        ),
    ],
)
def test_a_bad_bind_address_is_one_line(
    bind: str, message: str, db_url: str, tmp_path: Path
) -> None:
    result = run_relay(
        ["serve"],
        {
            "RELAY_BIND": bind,
            "RELAY_PORT": str(free_port()),
            "RELAY_DATABASE_URL": db_url,
            "RELAY_DATA_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 2
    assert one_line(result) == message


def test_bind_accepts_ip_addresses_only() -> None:
    assert load_settings({"RELAY_BIND": "[::1]"}).bind == "::1"
    assert load_settings({"RELAY_BIND": "0.0.0.0"}).bind == "0.0.0.0"
    with pytest.raises(ConfigError, match="RELAY_BIND must be an IP address"):
        load_settings({"RELAY_BIND": "localhost"})


@pytest.mark.parametrize("command", ["serve", "migrate", "export", "import", "community"])
def test_an_unreachable_database_is_one_line_without_its_password(
    command: str, closed_port: int, tmp_path: Path
) -> None:
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:{closed_port}/relay"
    args = ["community", "list"] if command == "community" else [command]
    result = run_relay(
        args,
        {"RELAY_DATABASE_URL": url, "RELAY_DATA_DIR": str(tmp_path), "RELAY_PORT": "0"},
    )
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(
        f"relay: RELAY_DATABASE_URL postgresql://relay:***@127.0.0.1:{closed_port}/relay "
        "cannot be reached: "
    ), line
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        (
            {"RELAY_DATABASE_URL": f"mysql://relay:{PASSWORD}@db/relay"},
            "RELAY_DATABASE_URL must be a postgres or postgresql URL, got "
            "'mysql://relay:***@db/relay'",
        ),
        (
            {"RELAY_REDIS_URL": f"http://:{PASSWORD}@cache:6379/0"},
            "RELAY_REDIS_URL must be a redis or rediss URL, got 'http://:***@cache:6379/0'",
        ),
        (
            {"RELAY_DATABASE_URL": f"postgresql://relay:{PASSWORD}@db:port/relay"},
            "RELAY_DATABASE_URL is not a valid URL",
        ),
    ],
)
def test_configuration_errors_never_show_a_password(env: dict[str, str], shown: str) -> None:
    result = run_relay(["serve"], env)
    assert result.returncode == 2
    assert shown in one_line(result)
    assert PASSWORD not in result.stderr


def test_redact_urls() -> None:
    assert redact_urls("postgresql://u:p@ss@h/db x") == "postgresql://u:***@h/db x"
    assert redact_urls("postgresql://h/db?user=u&password=pw&x=1") == (
        "postgresql://h/db?user=u&password=***&x=1"
    )
    assert redact_urls("postgresql://u@h/db and postgresql://u:@/db?host=/s") == (
        "postgresql://u@h/db and postgresql://u:@/db?host=/s"
    )


# Root writes anywhere: as root, the relay runs without the capabilities that let it.
AS_AN_ORDINARY_USER = (
    ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
    if os.geteuid() == 0
    else ()
)


def test_an_unwritable_data_directory_is_one_line(db_url: str, tmp_path: Path) -> None:
    if AS_AN_ORDINARY_USER and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    path = tmp_path / "read-only"
    path.mkdir(mode=0o555)
    result = run_relay(
        ["serve"],
        {"RELAY_DATA_DIR": str(path), "RELAY_DATABASE_URL": db_url, "RELAY_PORT": "0"},
        prefix=AS_AN_ORDINARY_USER,
    )
    path.chmod(0o755)
    assert result.returncode == 2
    assert one_line(result) == f"relay: RELAY_DATA_DIR {path} is not writable: Permission denied"


# -- the data directory is named -----------------------------------------------------------


def test_a_command_run_elsewhere_names_the_data_directory_it_created(tmp_path: Path) -> None:
    """The operator's mistake: `relay export` run from another directory than the relay's
    works on a new ./relay-data. It says so, and says that database has no tables."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = elsewhere / "relay-data"
    result = run_relay(["export"], {}, cwd=elsewhere)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"relay: created the data directory {data} (RELAY_DATA_DIR)",
        f"relay: the embedded database in {data} (RELAY_DATA_DIR) has no relay tables: run "
        "`relay migrate`, or point RELAY_DATA_DIR or RELAY_DATABASE_URL at the relay's "
        "database",
    ]
    # Run again: nothing is created any more, and the missing tables are still named.
    again = run_relay(["export"], {}, cwd=elsewhere)
    assert again.returncode == 1
    assert one_line(again).startswith(f"relay: the embedded database in {data} (RELAY_DATA_DIR)")
    # The embedded PostgreSQL was stopped by each command as it left.
    assert not (data / "postgres" / "postmaster.pid").exists()


# -- import's exit status ------------------------------------------------------------------


async def test_import_exits_1_when_a_line_was_refused(db_url: str, tmp_path: Path) -> None:
    good = make_event()
    data = (good.to_json() + "\n" + "not json\n").encode()
    env = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path)}
    refused = await trio.to_thread.run_sync(
        lambda: run_relay(["import"], env, stdin=data)
    )
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        "relay: 1 of 2 lines were invalid and not imported (the others were); "
        "--allow-invalid exits 0 for that"
    )
    assert "stored 1" in refused.stderr  # the valid line was imported all the same
    allowed = await trio.to_thread.run_sync(
        lambda: run_relay(["import", "--allow-invalid"], env, stdin=data)
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "duplicate 1, superseded 0, deleted 0, invalid 1" in allowed.stderr
    clean = await trio.to_thread.run_sync(
        lambda: run_relay(["import"], env, stdin=good.to_json().encode())
    )
    assert clean.returncode == 0, clean.stderr


# -- on/off --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("on", True), ("ON", True), ("true", True), ("1", True), ("yes", True),
     ("off", False), ("false", False), ("0", False), ("No", False)],
)  # fmt: skip
def test_booleans_read_on_off_and_their_synonyms(value: str, expected: bool) -> None:
    settings = load_settings({"RELAY_RATE_LIMITS": value, "RELAY_GIT_PUBLIC_READ": value})
    assert settings.rate_limits is settings.git_public_read is expected


def test_a_bad_boolean_says_on_or_off() -> None:
    result = run_relay(["serve"], {"RELAY_RATE_LIMITS": "maybe"})
    assert result.returncode == 2
    assert one_line(result) == (
        "relay: configuration error: RELAY_RATE_LIMITS must be on or off, got 'maybe'"
    )


# -- community add -------------------------------------------------------------------------


def test_community_add_without_a_host_says_so(db_url: str, tmp_path: Path) -> None:
    env = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path)}
    result = run_relay(["community", "add"], env)
    assert result.returncode == 2
    assert one_line(result) == "relay: configuration error: community add needs a host name"
    assert "None" not in result.stderr


# -- --help --------------------------------------------------------------------------------


def test_every_command_selector_names_settings() -> None:
    for command, selectors in COMMAND_SETTINGS.items():
        for selector in selectors:
            assert any(selects(selector, s) for s in SETTINGS), (command, selector)
    assert settings_of("serve") == SETTINGS


@pytest.mark.parametrize("command", [*SETTINGS_COMMANDS, "keygen"])
def test_every_command_help_describes_it_and_lists_the_settings_it_reads(
    command: str,
) -> None:
    result = run_relay([command, "--help"], {})
    assert result.returncode == 0
    usage, description = result.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: relay {command}")
    assert len(description.split()) >= 8, result.stdout  # a description, not a usage line
    listed = set(re.findall(r"^  (RELAY_[A-Z0-9_]+) ", result.stdout, re.MULTILINE))
    assert listed == {s.env for s in settings_of(command)}, command


def test_the_settings_lists_are_the_ones_asked_for() -> None:
    def names(command: str) -> set[str]:
        return {s.env for s in settings_of(command)}

    database = {"RELAY_DATA_DIR", "RELAY_DATABASE_URL", "RELAY_DB_POOL_SIZE"}
    for command in ("migrate", "community", "export", "import"):
        assert database <= names(command)
        assert not any(n.startswith("RELAY_S3_") for n in names(command))
    assert "RELAY_HOSTS" in names("export") & names("import")
    for command in ("probe", "gc"):
        assert {s.env for s in SETTINGS if s.env.startswith("RELAY_S3_")} <= names(command)
        assert "RELAY_DATABASE_URL" not in names(command)
    assert "RELAY_GIT_PROBE_WRITERS" in names("probe")
    assert names("keygen") == set()


# -- progress ------------------------------------------------------------------------------

PROGRESS_LINE = re.compile(
    r"^relay (?P<label>export|import|probe): (?P<done>\d+) (?P<unit>[a-z ]+?)(?:, .*)?, "
    r"(?P<rate>\d+) (?P=unit)/s, (?P<seconds>\d+\.\d) s$"
)


def progress_lines(stderr: str, label: str) -> list[int]:
    """The counts of the progress lines of `label`."""
    counts = []
    for line in stderr.splitlines():
        match = PROGRESS_LINE.match(line)
        if match and match["label"] == label:
            counts.append(int(match["done"]))
    return counts


async def test_export_and_import_print_periodic_progress_lines(
    db_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    """Not on a terminal: a line every --progress-count events (100,000 by default; lowered
    here so that 11,000 events show it) or every --progress-seconds (5)."""
    events = [make_event(content=f"note {i}") for i in range(11_000)]
    data = "".join(e.to_json() + "\n" for e in events).encode()
    into = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path)}
    imported = await trio.to_thread.run_sync(
        lambda: run_relay(["import", "--progress-count", "5000"], into, stdin=data)
    )
    assert imported.returncode == 0, imported.stderr
    # Lines are counted a batch (1,000) at a time: one at 5,000 and one at 10,000.
    assert progress_lines(imported.stderr, "import") == [5000, 10000]
    assert "relay import: 5000 lines, stored 5000, invalid 0, " in imported.stderr
    exported = await trio.to_thread.run_sync(
        lambda: run_relay(["export", "--progress-count", "5000"], into)
    )
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 11_000
    assert progress_lines(exported.stderr, "export") == [5000, 10000]
    assert exported.stderr.splitlines()[-1] == "exported 11000 events from localhost"
    # By time: --progress-seconds 0 writes a line at every batch.
    timed = await trio.to_thread.run_sync(
        lambda: run_relay(
            ["import", "--progress-seconds", "0"],
            {"RELAY_DATABASE_URL": empty_database_url, "RELAY_DATA_DIR": str(tmp_path)},
            stdin=data,
        )
    )
    assert timed.returncode == 0, timed.stderr
    assert progress_lines(timed.stderr, "import") == list(range(1000, 11_001, 1000))
    # The defaults print nothing for a small, quick import.
    quiet = await trio.to_thread.run_sync(lambda: run_relay(["import"], into, stdin=data))
    assert progress_lines(quiet.stderr, "import") == []


def test_probe_prints_progress_lines(tmp_path: Path) -> None:
    env = {
        "RELAY_DATA_DIR": str(tmp_path),
        "RELAY_GIT_PROBE_WRITERS": "2",
        "RELAY_GIT_PROBE_ROUNDS": "1",
    }
    result = run_relay(["probe", "--progress-seconds", "0"], env)
    assert result.returncode == 0, result.stderr
    counts = progress_lines(result.stderr, "probe")
    assert counts == list(range(1, len(counts) + 1)) and len(counts) > 5
    phases = re.findall(r"store calls, (\w+), 0 dropped,", result.stderr)
    assert phases[0] == "sequential" and phases[-1] == "etag_round_trip"
    assert "object store conformance probe: PASSED" in result.stdout


async def test_on_a_terminal_the_progress_line_rewrites_itself(
    db_url: str, tmp_path: Path
) -> None:
    """stderr a terminal: one line rewritten with \\r, ended by a newline."""
    env = {
        **clean_environ(),
        "RELAY_DATABASE_URL": db_url,
        "RELAY_DATA_DIR": str(tmp_path),
        "RELAY_LOG_LEVEL": "warning",
    }
    data = "".join(make_event().to_json() + "\n" for _ in range(3000)).encode()
    primary, secondary = pty.openpty()
    try:
        with trio.fail_after(120):
            result = await trio.run_process(
                [*RELAY_CLI, "import", "--progress-count", "1", "--progress-seconds", "0"],
                stdin=data, stdout=subprocess.DEVNULL, stderr=secondary, env=env, check=False,
            )  # fmt: skip
        os.close(secondary)
        secondary = -1
        written = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert result.returncode == 0
    text = written.decode()
    first, summary = text.split("\n", 1)[0], text.split("\n", 1)[1]
    # The terminal's own line discipline turns \n into \r\n.
    assert first.startswith("\rrelay import: ") and first.endswith("\x1b[K\r")
    assert "relay import: 3000 lines, stored 3000, invalid 0, " in first.split("\r")[-2]
    assert summary.startswith("imported into localhost: read 3000, stored 3000")


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_periods_and_terminal_rewrites() -> None:
    now = [0.0]
    lines = Stream(tty=False)
    progress = Progress(
        "export", "events", stream=lines, seconds=5, count=100, clock=lambda: now[0]
    )
    now[0] = 1.0
    for done in (40, 80, 120, 150):  # 100 more than the last line at 120
        progress.update(done)
    now[0] = 7.0  # five seconds after the last line: another, however few events
    progress.update(160)
    progress.finish()  # nothing more: the command prints its summary
    assert lines.getvalue().splitlines() == [
        "relay export: 120 events, 120 events/s, 1.0 s",
        "relay export: 160 events, 23 events/s, 7.0 s",
    ]

    now[0] = 0.0
    tty = Stream(tty=True)
    progress = Progress("import", "lines", stream=tty, clock=lambda: now[0])
    progress.update(10, "stored 10")
    now[0] = 1.0
    progress.update(20, "stored 20")
    progress.update(30, "stored 30")  # within the refresh period: not drawn yet
    now[0] = 2.0
    progress.finish()
    assert tty.getvalue() == (
        "\rrelay import: 20 lines, stored 20, 20 lines/s, 1.0 s\x1b[K"
        "\rrelay import: 30 lines, stored 30, 15 lines/s, 2.0 s\x1b[K\n"
    )
