"""`relay serve | migrate | keygen | ...`: the command line, configured by RELAY_* settings;
the user's commands (`whoami`, `token`, `repo`, `git-credential`) run in relay/client.py.

What stops a command is one line on stderr, `relay: <message>` (passwords of URLs hidden),
and an exit status: 2 for a setting the relay cannot use or that stops it at start-up (a
port in use, a database it cannot reach, a data directory it cannot write or another relay
holds), 1 for any other failure. `startup_error` maps what the standard library and the
driver raise at start-up to those messages.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from ipaddress import ip_address
from types import CodeType

import trio
from coincurve import PrivateKey

from relay import client
from relay.config import SETTINGS, ConfigError, Setting, Settings, load_settings, settings_help
from relay.errors import OperatorError, StartupError, redact_urls
from relay.git.gc import DEFAULT_GRACE_SECONDS, collect
from relay.git.probe import Probe, ProbeFailed
from relay.listening import worker_role
from relay.logs import configure_logging
from relay.progress import PROGRESS_COUNT, PROGRESS_SECONDS, Progress
from relay.store.db import Database, DatabaseError
from relay.store.embedded import DataDirLock
from relay.store.migrations import migrate

log = logging.getLogger("relay")

# The settings each command reads, by name without RELAY_, a trailing * matching any rest:
# its --help lists them, in the order of relay.config.SETTINGS. `serve` reads them all.
_LOGGING = ("LOG_LEVEL", "LOG_FORMAT")
_DATABASE = ("DATA_DIR", "DATABASE_URL", "DB_*", *_LOGGING)
_OBJECT_STORE = ("DATA_DIR", "S3_*", *_LOGGING)
_EVENT_LIMITS = ("MAX_EVENT_*", "MAX_TAG_VALUE_BYTES", "MAX_FUTURE_SECONDS")
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "serve": ("*",),
    "migrate": _DATABASE,
    "community": (*_DATABASE, "REDIS_*", "SECRET_KEY"),
    "export": (*_DATABASE, "HOSTS"),
    "import": (*_DATABASE, "HOSTS", *_EVENT_LIMITS),
    "sync": (*_DATABASE, "HOSTS", *_EVENT_LIMITS, "MAX_FILTER_VALUES", "NEG_MAX_*", "NEG_FRAME_*"),
    "probe": (*_OBJECT_STORE, "GIT_PROBE_*"),
    "gc": _OBJECT_STORE,
    "admin": (*_DATABASE, "HOSTS", "REDIS_*", "SECRET_KEY"),
    "member": (*_DATABASE, "HOSTS", "REDIS_*", "SECRET_KEY"),
    "keygen": (),
}


def selects(selector: str, setting: Setting) -> bool:
    name = setting.env.removeprefix("RELAY_")
    if selector.endswith("*"):
        return name.startswith(selector[:-1])
    return name == selector


def settings_of(command: str) -> tuple[Setting, ...]:
    """The settings `command` reads (COMMAND_SETTINGS), in SETTINGS order."""
    selectors = COMMAND_SETTINGS[command]
    return tuple(s for s in SETTINGS if any(selects(x, s) for x in selectors))


def _settings_epilog(command: str) -> str:
    if command == "serve":
        return settings_help()
    chosen = settings_of(command)
    if not chosen:
        return "Reads no settings."
    width = max(len(s.env) for s in chosen)
    lines = ["settings it reads (environment variables; all RELAY_* values are checked):"]
    for s in chosen:
        default = s.default if s.default else "(empty)"
        lines.append(f"  {s.env.ljust(width)}  {s.help} [default: {default}]")
    return "\n".join(lines)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """A settings command: `summary` in `relay --help`, `description` and the settings it
    reads in its own --help."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_settings_epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _progress_options(parser: argparse.ArgumentParser, unit: str) -> None:
    parser.add_argument(
        "--progress-seconds", type=float, default=PROGRESS_SECONDS, metavar="SECONDS",
        help="when stderr is not a terminal, a progress line this often "
        f"(default {PROGRESS_SECONDS:.0f})",
    )  # fmt: skip
    parser.add_argument(
        "--progress-count", type=int, default=PROGRESS_COUNT, metavar="N",
        help=f"... or every N {unit}, whichever comes first (default {PROGRESS_COUNT})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="A multi-tenant Nostr relay that hosts git repositories.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _command(
        commands,
        "serve",
        "run the relay (embedded PostgreSQL unless RELAY_DATABASE_URL is set)",
        "Serves Nostr (websockets, NIP-11) and git over HTTP on RELAY_BIND:RELAY_PORT until\n"
        "SIGTERM or SIGINT. The data directory (RELAY_DATA_DIR) holds the relay key, the\n"
        "embedded PostgreSQL unless RELAY_DATABASE_URL is set, and git objects unless\n"
        "RELAY_S3_ENDPOINT is set; one relay at a time may use it (relay.lock). A setting\n"
        "it cannot use (a port in use, an unreachable database, ...) stops it with one line\n"
        "and exit status 2.",
    )
    _command(
        commands,
        "migrate",
        "apply database migrations and exit",
        "Applies the migrations the database lacks and prints which; safe to run again\n"
        "(relays and migrations started at once wait on one lock).",
    )
    _command(
        commands,
        "keygen",
        "print a new secret key for RELAY_SECRET_KEY",
        "Prints a new secp256k1 secret key, 64 hex characters, for RELAY_SECRET_KEY.",
    )
    probe = _command(
        commands,
        "probe",
        "check that the object store honours conditional writes; exit 0 or 1",
        "Runs the conformance probe the relay runs at start-up (RELAY_GIT_PROBE) against\n"
        "the object store: write/read round trips, If-Match and If-None-Match races, an\n"
        "ETag round trip. Prints the report; exit status 0 when it passes, 1 when not.\n"
        "Progress goes to stderr.",
    )
    _progress_options(probe, "store calls")
    gc = _command(
        commands,
        "gc",
        "remove the git objects no repository reaches any more",
        "Removes the packs, idx files and manifests that no pointer reaches (and old probe\n"
        "objects), once older than the grace period, so in-flight pushes and clones are\n"
        "never hurt. Safe to run on several pods at once. Prints each object and the bytes.",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    gc.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_SECONDS, metavar="SECONDS",
        help=f"keep what was written more recently (default {DEFAULT_GRACE_SECONDS:.0f})",
    )  # fmt: skip
    token = commands.add_parser(
        "token",
        help="print a NIP-98 Authorization header value for a git repository URL",
        description=(
            "Prints 'Nostr <token>' for URL, signed with the key in $NOSTR_SECRET_KEY (hex or "
            "nsec) or --key-file. It is valid for 60 s. Push with:\n"
            '  git -c http.extraHeader="Authorization: $(relay token URL)" push'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("url", help="the repository URL, e.g. https://host/git/<owner>/<repo>.git")
    _key_file_option(token)
    whoami = commands.add_parser(
        "whoami",
        help="print the public key (hex and npub) of your key",
        description="Prints the hex pubkey and the npub of the key in $NOSTR_SECRET_KEY (hex "
        "or nsec) or --key-file.",
    )
    _key_file_option(whoami)
    repo = commands.add_parser(
        "repo",
        help="announce, list or delete git repositories hosted by a relay (NIP-34)",
        description=(
            "Talks to a relay over its websocket (--relay, else $NOSTR_RELAY_URL, else\n"
            f"{client.DEFAULT_RELAY_URL}), signing with the key in $NOSTR_SECRET_KEY (hex or\n"
            "nsec) or --key-file.\n"
            "  relay repo create NAME     announce NAME; prints its clone URL\n"
            "  relay repo list            your repositories (everyone's without a key)\n"
            "  relay repo delete NAME     delete it: the name is released, clones get 404"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    repo_commands = repo.add_subparsers(dest="repo_command", metavar="ACTION", required=True)
    create = repo_commands.add_parser(
        "create",
        help="announce a repository (kind 30617) the relay hosts; prints its clone URL",
        description=(
            "Publishes a kind 30617 whose clone tag lists the relay's two URLs of NAME, and\n"
            "waits for the relay's OK. Prints the clone URL (npub form). A refusal is printed\n"
            "as the relay worded it, with exit status 1."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name", help="the repo id: 1-64 of A-Z a-z 0-9 . _ -")
    create.add_argument("--description", metavar="TEXT")
    create.add_argument(
        "--maintainer", action="append", default=[], metavar="NPUB_OR_HEX",
        help="another key that may push (repeat for more)",
    )  # fmt: skip
    _relay_option(create)
    _key_file_option(create)
    listing = repo_commands.add_parser(
        "list",
        help="list announced repositories: name, owner npub, clone URL, description",
        description=(
            "Prints one tab-separated line per kind 30617 stored on the relay: name, owner\n"
            "npub, clone URL (the first one this relay serves, else the first), description.\n"
            "Lists --owner's, else yours when a key is set, else everyone's."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--owner", metavar="NPUB_OR_HEX")
    _relay_option(listing)
    _key_file_option(listing)
    delete = repo_commands.add_parser(
        "delete",
        help="delete your announcement of a repository (NIP-09); the relay removes it",
    )
    delete.add_argument("name")
    _relay_option(delete)
    _key_file_option(delete)
    credential = commands.add_parser(
        "git-credential",
        help="a git credential helper answering with NIP-98 tokens",
        description=(
            "On `get`, answers git with the user name 'nostr' and a NIP-98 token for the\n"
            "repository URL as the password (HTTP Basic), signed with the key in\n"
            "$NOSTR_SECRET_KEY or --key-file. git passes the repository's path only with\n"
            "credential.useHttpPath, so set both for the relay's URL:\n"
            "  git config --global credential.http://localhost:7777.helper \\\n"
            "    '!relay git-credential'\n"
            "  git config --global credential.http://localhost:7777.useHttpPath true\n"
            "`store` and `erase` do nothing."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    credential.add_argument("action", choices=("get", "store", "erase"))
    _key_file_option(credential)
    export = _command(
        commands,
        "export",
        "write a community's stored events to stdout, one JSON event a line",
        "Writes every stored, unexpired event of the community to stdout as JSON\n"
        "Lines, oldest first, for `relay import`. The database is only read.\n"
        "Progress (events, rate) goes to stderr.\n"
        "  relay export --community example.com > events.jsonl",
    )
    export.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    _progress_options(export, "events")
    import_ = _command(
        commands,
        "import",
        "store events read from stdin (JSON Lines, as export writes them)",
        "Stores one JSON event a line from stdin, with the checks and the replacement\n"
        "and deletion (NIP-09) rules of the websocket path. Expired, ephemeral and AUTH\n"
        "events are skipped; invalid lines are counted and named by line number, and\n"
        "make the exit status 1 (the valid lines are stored all the same) unless\n"
        "--allow-invalid. Re-running a file stores nothing twice, so an interrupted\n"
        "import resumes. Repositories are not re-created by import: kind 30617\n"
        "announcements are stored as events only (no repo name is reserved, no git data\n"
        "is created). Progress (lines, rate) goes to stderr, then a summary.\n"
        "  relay import --community example.com < events.jsonl",
    )
    import_.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    import_.add_argument(
        "--allow-invalid", action="store_true",
        help="exit 0 even when lines were invalid (they are still counted and named)",
    )  # fmt: skip
    _progress_options(import_, "lines")
    sync = _command(
        commands,
        "sync",
        "reconcile a community with another relay (NIP-77) and copy what either lacks",
        "Reconciles the community's events matching --filter (default {}: all) with the\n"
        "relay at URL (ws:// or wss://, any NIP-77 relay) by negentropy, then copies the\n"
        "difference: down fetches what this relay lacks (REQ by ids, --batch a REQ) and\n"
        "stores it as `relay import` does (id and signature checked, replacement and\n"
        "deletion rules); up sends what the remote lacks (EVENT, each OK read; refusals\n"
        "are counted and named); both does down, then up. What is fetched is stored batch\n"
        "by batch, so an interrupted sync resumes when run again. Progress goes to\n"
        "stderr, then a summary. Exit status 1 when a fetched event was invalid or a sent\n"
        "one refused (the rest is done all the same) or the remote failed or refused the\n"
        "reconciliation, 2 for an argument it cannot use.\n"
        "  relay sync wss://relay.example.com --filter '{\"kinds\":[1]}' --direction both",
    )
    sync.add_argument("url", metavar="URL", help="the other relay's websocket URL")
    sync.add_argument(
        "--filter", metavar="JSON", help="a NIP-01 filter of the events to reconcile "
        "(default {}: every event)",
    )  # fmt: skip
    sync.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    sync.add_argument(
        "--direction", choices=("down", "up", "both"), default="down",
        help="down: fetch what this relay lacks (the default); up: send what the other "
        "lacks; both",
    )  # fmt: skip
    sync.add_argument(
        "--batch", type=int, default=500, metavar="N",
        help="ids asked for in one REQ, events read from the store at a time (default 500)",
    )  # fmt: skip
    _progress_options(sync, "events")
    admin = _command(
        commands,
        "admin",
        "NIP-86 management of a community from the shell (bans, allow-list, blocked IPs)",
        "Runs one NIP-86 method for the community (--community, default the first of\n"
        "RELAY_HOSTS) through the same code as the relay's endpoint, writing the same\n"
        "tables; running pods see it within a second. Prints the method's result (JSON).\n"
        "Methods: supportedmethods, banpubkey PUBKEY [REASON] [delete], unbanpubkey,\n"
        "listbannedpubkeys, allowpubkey PUBKEY [REASON], unallowpubkey, listallowedpubkeys,\n"
        "banevent ID [REASON], allowevent ID, listbannedevents, blockip ADDRESS [REASON],\n"
        "unblockip ADDRESS, listblockedips, changerelayname NAME, changerelaydescription\n"
        "TEXT; and the community's own admins (who may call the endpoint besides\n"
        "RELAY_ADMIN_PUBKEYS): addadmin PUBKEY, removeadmin PUBKEY, listadmins. A pubkey\n"
        "may be hex or an npub; `delete` after a ban's reason also deletes the pubkey's\n"
        "stored events.\n"
        "  relay admin --community example.com banpubkey npub1... spam delete",
    )
    admin.add_argument("method", help="the NIP-86 method (or addadmin, removeadmin, listadmins)")
    admin.add_argument("params", nargs="*", help="its parameters, in the NIP's order")
    admin.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    community = commands.add_parser(
        "community",
        help="list the communities, or add one (served at once, by every pod)",
        epilog=_settings_epilog("community"),
        description=(
            "A community is a host name with its own events and repositories, and any\n"
            "number of aliases: other names that reach it. Those in RELAY_HOSTS are created\n"
            "at start-up; `relay community add HOST` adds another without a restart (pods\n"
            "find it on its first request), `--alias-of EXISTING` makes HOST a name of an\n"
            "existing community instead. `list` prints each community's names on a line.\n"
            "`--members-only` makes the new community members-only (NIP-43);\n"
            "`relay community set HOST access=members` (or access=public) changes an\n"
            "existing one's: in a members-only community a connection must AUTH (NIP-42)\n"
            "as a member before it reads or writes, and git needs a member's NIP-98 token.\n"
            "Reads RELAY_DATABASE_URL (or the embedded database in RELAY_DATA_DIR)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    community.add_argument("action", choices=("list", "add", "set"))
    community.add_argument("host", nargs="?", help="the host name to add or set")
    community.add_argument("setting", nargs="?", help="set: access=members or access=public")
    community.add_argument(
        "--alias-of", metavar="HOST", help="make HOST another name of this community"
    )
    community.add_argument(
        "--members-only", action="store_true", help="add: the new community is members-only"
    )
    member = _command(
        commands,
        "member",
        "the members of a members-only community (NIP-43): add, remove, list, invite",
        "Members of a members-only community read and write it (after NIP-42 AUTH) and use\n"
        "its git repositories (NIP-98). Every change is published by the relay, signed with\n"
        "its key: the community's kind 13534 membership list and a kind 8000 (added) or\n"
        "8001 (removed); running pods apply it within a second.\n"
        "  relay member add HOST NPUB       make NPUB (or a hex pubkey) a member\n"
        "  relay member remove HOST NPUB    end the membership (open connections lose access)\n"
        "  relay member list HOST           hex, npub, how they joined, since when\n"
        "  relay member invite HOST [--uses N] [--expires 7d]\n"
        "                                   print a new invite code, claimed with a kind 28934\n"
        "                                   join request (default: 1 use, 7 days; --uses 0:\n"
        "                                   unlimited; --expires never)",
    )
    member.add_argument("action", choices=("add", "remove", "list", "invite"))
    member.add_argument("host", help="the community (one of its host names)")
    member.add_argument("who", nargs="?", help="add/remove: the member's npub or hex pubkey")
    member.add_argument("--uses", type=int, default=1, help="invite: uses (0: unlimited)")
    member.add_argument("--expires", default="7d", help="invite: 30m, 12h, 7d, 2w or never")
    return parser


def _key_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file", help="file holding your secret key (hex or nsec); else $NOSTR_SECRET_KEY"
    )


def _relay_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relay", metavar="URL",
        help="the relay's websocket URL (default: $NOSTR_RELAY_URL, else "
        f"{client.DEFAULT_RELAY_URL})",
    )  # fmt: skip


async def _serve(settings: Settings) -> None:
    from relay.app import serve
    from relay.workers import supervise

    role = worker_role()

    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if shutdown.is_set() and role is not None:
                        # A signal to the whole process group (Ctrl-C, `kill -- -PGID`)
                        # reaches a worker besides its parent's: the parent decides when
                        # a worker must stop at once (it kills it).
                        log.info("received %s, already shutting down", name)
                        continue
                    if shutdown.is_set():
                        log.warning("received %s again, stopping now", name)
                        nursery.cancel_scope.cancel()
                        return
                    log.info("received %s, shutting down gracefully", name)
                    shutdown.set()

            async def run_relay(task_status: trio.TaskStatus[int]) -> None:
                await serve(settings, shutdown=shutdown, role=role, task_status=task_status)
                nursery.cancel_scope.cancel()

            async def run_workers() -> None:
                await supervise(settings, shutdown)
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            if settings.workers > 1 and role is None:
                nursery.start_soon(run_workers)
            else:
                await nursery.start(run_relay)


async def _probe(settings: Settings, progress: Progress) -> None:
    from relay.git.stores import describe, open_object_store

    async with open_object_store(settings) as store:
        probe = Probe(
            store,
            writers=settings.git_probe_writers,
            rounds=settings.git_probe_rounds,
            op_timeout=settings.s3_timeout_seconds,
            deadline=settings.git_probe_deadline_seconds,
            progress=progress,
        )
        try:
            report = await probe.run()
        finally:
            progress.finish()
    print(f"object store: {describe(settings)}")
    print(report.render())
    if not report.ok:
        raise ProbeFailed("the object store failed the conformance probe")


async def _gc(settings: Settings, *, dry_run: bool, grace: float) -> None:
    from relay.git.objectstore import GitObjects
    from relay.git.stores import describe, open_object_store

    async with open_object_store(settings) as store:
        report = await collect(GitObjects(store), grace_seconds=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in report.removed:
        print(f"{verb} {item.key} ({item.size} bytes)")
    print(
        f"object store: {describe(settings)}; {report.pointers} repositories, "
        f"{report.reachable} objects reachable, {report.young} unreachable but younger than "
        f"{grace:.0f} s; {verb} {len(report.removed)} objects, {report.removed_bytes} bytes"
    )


async def _community(
    settings: Settings,
    action: str,
    host: str | None,
    alias_of: str | None,
    setting: str | None = None,
    members_only: bool = False,
) -> None:
    from relay.app import open_database
    from relay.members import access_command, parse_access
    from relay.protocol.access import MEMBERS
    from relay.protocol.hosts import normalize_host
    from relay.store.communities import Communities

    name = normalize_host(host or "") if action in ("add", "set") else None
    if action in ("add", "set") and name is None:
        raise ConfigError(
            f"community {action} needs a host name"
            if not host
            else f"{host!r} is not a host name"
        )
    if action == "set":
        assert name is not None
        await access_command(settings, name, parse_access(setting or ""))
        return
    of = normalize_host(alias_of) if alias_of else None
    if alias_of and of is None:
        raise ConfigError(f"--alias-of {alias_of!r} is not a host name")
    async with open_database(settings) as db:
        await migrate(db)
        communities = Communities(db)
        if name is not None and of is not None:
            await communities.ensure([])
            refusal = await communities.add_alias(name, of)
            if refusal is not None:
                raise ConfigError(refusal)
        else:
            await communities.ensure([name] if name else [])
        for names in (await communities.names()).values():
            print(" ".join(names))
    if members_only and name is not None:
        await access_command(settings, name, MEMBERS)


async def _migrate(settings: Settings) -> None:
    from relay.app import open_database

    async with open_database(settings) as db:
        applied = await migrate(db)
        print(f"applied migrations: {applied or 'none (up to date)'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        print(PrivateKey().secret.hex())
        return 0
    if args.command in CLIENT_COMMANDS:
        return _client_command(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(exc)
    configure_logging(settings.log_level, settings.log_format)
    runner = {"serve": _serve, "migrate": _migrate}.get(args.command)
    if args.command == "community":
        runner = partial(
            _community, action=args.action, host=args.host, alias_of=args.alias_of,
            setting=args.setting, members_only=args.members_only,
        )  # fmt: skip
    elif args.command == "member":
        from relay.members import member_command

        runner = partial(
            member_command, action=args.action, host=args.host, who=args.who,
            uses=args.uses or None, expires=args.expires,
        )  # fmt: skip
    elif args.command == "gc":
        runner = partial(_gc, dry_run=args.dry_run, grace=args.grace)
    elif args.command == "probe":
        runner = partial(_probe, progress=_progress(args, "probe", "store calls"))
    elif args.command == "admin":
        from relay.admin import admin_command

        runner = partial(
            admin_command, community=args.community, method=args.method, params=args.params
        )
    elif args.command == "sync":
        from relay import sync

        try:
            options = sync.parse_options(
                args.url, args.filter, args.direction, args.batch, settings.limits
            )
        except OperatorError as exc:
            return _fail(exc)
        runner = partial(
            sync.sync_command, options=options, community=args.community,
            progress=partial(Progress, seconds=args.progress_seconds, count=args.progress_count),
        )  # fmt: skip
    elif runner is None:
        from relay import transfer

        if args.command == "export":
            runner = partial(
                transfer.export_command, community=args.community,
                progress=_progress(args, "export", "events"),
            )  # fmt: skip
        else:
            runner = partial(
                transfer.import_command, community=args.community,
                allow_invalid=args.allow_invalid, progress=_progress(args, "import", "lines"),
            )  # fmt: skip
    lock = DataDirLock(settings.data_path)
    try:
        if _uses_data_dir(args.command, settings):
            _prepare_data_dir(settings)
        if args.command == "serve" and worker_role() is None:  # a worker's parent holds both
            lock.acquire()  # held until the process ends
            _check_port(settings)
        trio.run(runner, settings)
    except Exception as exc:
        known = startup_error(exc, settings)
        if known is None:
            raise
        return _fail(known)
    finally:
        lock.release()
    return 0


def _uses_data_dir(command: str, settings: Settings) -> bool:
    """serve always (its key, its lock); the others for the embedded database or the
    directory object store."""
    if command in ("probe", "gc"):
        return not settings.s3_endpoint
    return command == "serve" or not settings.database_url


def _fail(exc: OperatorError) -> int:
    print(f"relay: {exc.prefix}{redact_urls(str(exc))}", file=sys.stderr)
    return exc.exit_status


def _progress(args: argparse.Namespace, label: str, unit: str) -> Progress:
    return Progress(label, unit, seconds=args.progress_seconds, count=args.progress_count)


def _notice(settings: Settings, message: str) -> None:
    """A line for the operator before the command's own output: a log record when the logs
    are JSON, else a plain line."""
    if settings.log_format == "json":
        log.warning(message)
    else:
        print(f"relay: {message}", file=sys.stderr)


class DataDirUnusable(StartupError):
    """RELAY_DATA_DIR cannot be created or written (exit status 2)."""


def _prepare_data_dir(settings: Settings) -> None:
    """Create the data directory (saying so, with its absolute path: a command run from
    another directory than the relay's would otherwise work on a new ./relay-data without a
    word) and check that files can be written in it."""
    path = settings.data_path
    where = os.path.abspath(path)
    created = False
    if not path.is_dir():
        try:
            path.mkdir(parents=True)
            created = True
        except FileExistsError:
            raise DataDirUnusable(f"RELAY_DATA_DIR {where} is not a directory") from None
        except OSError as exc:
            raise DataDirUnusable(
                f"RELAY_DATA_DIR {where} cannot be created: {exc.strerror}"
            ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".relay-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataDirUnusable(
            f"RELAY_DATA_DIR {where} is not writable: {exc.strerror or exc}"
        ) from None
    if created:
        _notice(settings, f"created the data directory {where} (RELAY_DATA_DIR)")


def _check_port(settings: Settings) -> None:
    """Bind RELAY_BIND:RELAY_PORT as the listener will (and let go at once), so a port in
    use stops the relay before it starts its database."""
    if settings.port == 0:
        return
    family = socket.AF_INET6 if ip_address(settings.bind).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as trio's listener
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((settings.bind, settings.port))
        except OSError as exc:
            raise _listen_error(exc, settings) from None


class CannotListen(StartupError):
    """RELAY_BIND:RELAY_PORT cannot be listened on (exit status 2)."""


class DatabaseUnreachable(StartupError):
    """RELAY_DATABASE_URL cannot be connected to (exit status 2)."""


def _listen_error(exc: OSError, settings: Settings) -> CannotListen:
    bind, port = settings.bind, settings.port
    if exc.errno == errno.EADDRINUSE:
        return CannotListen(
            f"RELAY_PORT {port} is already in use on {bind}: another relay or program "
            "listens there; stop it or choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return CannotListen(
            f"RELAY_BIND {bind} is not an address of this host (0.0.0.0 or :: listen on "
            "every interface)"
        )
    if exc.errno == errno.EACCES:
        return CannotListen(
            f"RELAY_PORT {port} on {bind} needs privileges this process lacks (ports below "
            "1024); choose a port from 1024 up"
        )
    return CannotListen(f"cannot listen on {bind} port {port} (RELAY_BIND, RELAY_PORT): {exc}")


_LISTEN_CODE: CodeType = trio.open_tcp_listeners.__code__
_CONNECT_CODE: CodeType = getattr(Database.connect, "__code__")  # noqa: B009


def startup_error(exc: BaseException, settings: Settings) -> OperatorError | None:
    """The message for the operator of what stopped a command, looking inside exception
    groups: an OperatorError as it is, except that failing to connect to RELAY_DATABASE_URL
    and failing to listen are start-up errors (exit status 2); None for anything else."""
    for leaf in _leaves(exc):
        if isinstance(leaf, OSError) and _raised_in(leaf, _LISTEN_CODE):
            return _listen_error(leaf, settings)
        if (
            isinstance(leaf, DatabaseError)
            and settings.database_url
            and _raised_in(leaf, _CONNECT_CODE)
        ):
            cause = leaf.__cause__ or leaf
            return DatabaseUnreachable(
                f"RELAY_DATABASE_URL {redact_urls(settings.database_url)} cannot be reached: "
                f"{str(cause) or type(cause).__name__}"
            )
        if isinstance(leaf, OperatorError):
            return leaf
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _raised_in(exc: BaseException, code: CodeType) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


CLIENT_COMMANDS = ("whoami", "token", "repo", "git-credential")


def _client_command(args: argparse.Namespace) -> int:
    """A command of the user's (relay/client.py): no settings, a key and a relay URL."""
    try:
        if args.command == "whoami":
            client.whoami(args.key_file)
        elif args.command == "token":
            client.token(args.url, args.key_file)
        elif args.command == "git-credential":
            client.git_credential(args.action, args.key_file)
        elif args.repo_command == "create":
            client.repo_create(
                args.name, description=args.description, maintainers=args.maintainer,
                relay=args.relay, key_file=args.key_file,
            )  # fmt: skip
        elif args.repo_command == "list":
            client.repo_list(owner=args.owner, relay=args.relay, key_file=args.key_file)
        else:
            client.repo_delete(args.name, relay=args.relay, key_file=args.key_file)
    except OperatorError as exc:
        return _fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
