"""`relay serve | migrate | keygen | ...`: the command line, configured by RELAY_* settings;
the user's commands (`whoami`, `token`, `repo`, `git-credential`) run in relay/client.py."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial

import trio
from coincurve import PrivateKey

from relay import client
from relay.config import ConfigError, Settings, load_settings, settings_help
from relay.errors import OperatorError
from relay.git.gc import DEFAULT_GRACE_SECONDS, collect
from relay.git.probe import ProbeFailed
from relay.logs import configure_logging
from relay.store.migrations import migrate

log = logging.getLogger("relay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="A multi-tenant Nostr relay that hosts git repositories.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "serve",
        help="run the relay (embedded PostgreSQL unless RELAY_DATABASE_URL is set)",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser("keygen", help="print a new secret key for RELAY_SECRET_KEY")
    commands.add_parser(
        "probe", help="check that the object store honours conditional writes; exit 0 or 1"
    )
    gc = commands.add_parser(
        "gc",
        help="remove the git objects no repository reaches any more",
        description=(
            "Removes the packs, idx files and manifests that no pointer reaches (and old probe "
            "objects), once older than the grace period, so in-flight pushes and clones are "
            "never hurt. Safe to run on several pods at once. Prints each object and the bytes."
        ),
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
    export = commands.add_parser(
        "export",
        help="write a community's stored events to stdout, one JSON event a line",
        description=(
            "Writes every stored, unexpired event of the community to stdout as JSON\n"
            "Lines, oldest first, for `relay import`. The database is only read.\n"
            "  relay export --community example.com > events.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    import_ = commands.add_parser(
        "import",
        help="store events read from stdin (JSON Lines, as export writes them)",
        description=(
            "Stores one JSON event a line from stdin, with the checks and the replacement\n"
            "and deletion (NIP-09) rules of the websocket path. Expired, ephemeral and AUTH\n"
            "events are skipped; invalid lines are counted and named by line number.\n"
            "Re-running a file stores nothing twice, so an interrupted import resumes.\n"
            "Repositories are not re-created by import: kind 30617 announcements are\n"
            "stored as events only (no repo name is reserved, no git data is created).\n"
            "  relay import --community example.com < events.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import_.add_argument("--community", metavar="HOST", help="default: the first of RELAY_HOSTS")
    community = commands.add_parser(
        "community",
        help="list the communities, or add one (served at once, by every pod)",
        description=(
            "A community is a host name with its own events and repositories, and any\n"
            "number of aliases: other names that reach it. Those in RELAY_HOSTS are created\n"
            "at start-up; `relay community add HOST` adds another without a restart (pods\n"
            "find it on its first request), `--alias-of EXISTING` makes HOST a name of an\n"
            "existing community instead. `list` prints each community's names on a line.\n"
            "Reads RELAY_DATABASE_URL (or the embedded database in RELAY_DATA_DIR)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    community.add_argument("action", choices=("list", "add"))
    community.add_argument("host", nargs="?", help="the host name to add")
    community.add_argument(
        "--alias-of", metavar="HOST", help="make HOST another name of this community"
    )
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

    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if shutdown.is_set():
                        log.warning("received %s again, stopping now", name)
                        nursery.cancel_scope.cancel()
                        return
                    log.info("received %s, shutting down gracefully", name)
                    shutdown.set()

            async def run_relay(task_status: trio.TaskStatus[int]) -> None:
                await serve(settings, shutdown=shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            await nursery.start(run_relay)


async def _probe(settings: Settings) -> None:
    from relay.git.stores import describe, open_object_store, probe_store

    async with open_object_store(settings) as store:
        report = await probe_store(store, settings)
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
    settings: Settings, action: str, host: str | None, alias_of: str | None
) -> None:
    from relay.app import open_database
    from relay.protocol.hosts import normalize_host
    from relay.store.communities import Communities

    name = normalize_host(host or "") if action == "add" else None
    if action == "add" and name is None:
        raise ConfigError(
            "community add needs a host name" if not host else f"{host!r} is not a host name"
        )
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
        print(f"relay: {exc.prefix}{exc}", file=sys.stderr)
        return exc.exit_status
    configure_logging(settings.log_level, settings.log_format)
    runner = {"serve": _serve, "migrate": _migrate, "probe": _probe}.get(args.command)
    if args.command == "community":
        runner = partial(_community, action=args.action, host=args.host, alias_of=args.alias_of)
    elif args.command == "gc":
        runner = partial(_gc, dry_run=args.dry_run, grace=args.grace)
    elif runner is None:
        from relay import transfer

        command = {"export": transfer.export_command, "import": transfer.import_command}
        runner = partial(command[args.command], community=args.community)
    try:
        trio.run(runner, settings)
    except Exception as exc:
        known = _find_known_error(exc)
        if known is None:
            raise
        print(f"relay: {known.prefix}{known}", file=sys.stderr)
        return known.exit_status
    return 0


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
        print(f"relay: {exc.prefix}{exc}", file=sys.stderr)
        return exc.exit_status
    return 0


def _find_known_error(exc: BaseException) -> OperatorError | None:
    """The first error with a message for the operator, looking inside exception groups."""
    if isinstance(exc, OperatorError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_known_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
