"""`relay admin`: NIP-86 management from the operator's shell, for one community.

Every NIP-86 method the relay serves (`relay admin banpubkey <hex|npub> [reason]
[delete]`, `listbannedpubkeys`, `blockip <address>`, ...) runs through the same code as
the HTTP endpoint (`Moderation.call`) and writes the same tables; running pods see the
change within a second (told through Redis when RELAY_REDIS_URL is set, else at their next
reload). The community's own admins, who may call the endpoint besides
RELAY_ADMIN_PUBKEYS, are managed here only: `addadmin`, `removeadmin`, `listadmins`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from relay.config import ConfigError, Settings
from relay.keys import load_relay_key
from relay.protocol.bech32 import decode_key
from relay.server.management import METHODS, Call, Moderation, RpcError
from relay.server.membership import Membership
from relay.store.db import Connection, Database
from relay.store.events import EventStore
from relay.store.membership import MembershipStore
from relay.store.moderation import ModerationStore
from relay.transfer import open_community

ADMIN_METHODS = ("addadmin", "removeadmin", "listadmins")
# Methods whose first parameter is a pubkey (an npub is taken too) or an event id.
KEYED = frozenset({
    "banpubkey", "unbanpubkey", "allowpubkey", "unallowpubkey", "banevent", "allowevent",
    "addadmin", "removeadmin",
})  # fmt: skip


class AdminRefused(ConfigError):
    """The method refused its parameters (exit status 2, like a bad argument)."""


def key_param(value: str) -> str:
    """A hex pubkey (or event id) as given, or the hex of an npub."""
    if value.startswith("npub1"):
        decoded = decode_key("npub", value)
        if decoded is None:
            raise AdminRefused(f"{value!r} is not an npub")
        return decoded
    return value.lower()


async def admin_command(
    settings: Settings, community: str | None, method: str, params: list[str]
) -> None:
    if method not in (*METHODS, *ADMIN_METHODS):
        names = ", ".join((*METHODS, *ADMIN_METHODS))
        raise AdminRefused(f"unknown method {method!r}; one of: {names}")
    args: list[Any] = list(params)
    if args and method in KEYED:
        args[0] = key_param(args[0])
    async with open_community(settings, community) as (db, community_id, host):
        if method in ADMIN_METHODS:
            result = await _admins(db.run, community_id, method, args)
        else:
            async with shell_moderation(settings, db) as moderation:
                try:
                    result = await moderation.call(community_id, Call(method, args))
                except RpcError as exc:
                    raise AdminRefused(f"{method}: {exc}") from None
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"relay admin {method} on {host}: done", file=sys.stderr)


@asynccontextmanager
async def shell_moderation(settings: Settings, db: Database) -> AsyncIterator[Moderation]:
    """The moderation of a command run from the shell, as a pod's: its changes are told to
    running pods through Redis when RELAY_REDIS_URL is set (else they reload within a
    second); members-only communities' changes sign their NIP-43 events with the relay's
    key (RELAY_SECRET_KEY, else the data directory's), and need it (no membership without)."""
    moderation = Moderation(
        ModerationStore(db), admins=frozenset(), https=False, auth_window=0,
        hosts_of=_no_names, redis_url=settings.redis_url, prefix=settings.redis_prefix,
    )  # fmt: skip
    key = load_relay_key(settings.secret_key, settings.data_path)
    if key is not None:
        moderation.membership = Membership(
            MembershipStore(db), EventStore(db), key, moderation.changed
        )
    try:
        await moderation.reload()
        yield moderation
    finally:
        await moderation.aclose()


async def _no_names(community_id: int) -> frozenset[str]:
    return frozenset()


async def _admins(run: Any, community_id: int, method: str, args: list[Any]) -> Any:
    if method == "listadmins":

        async def fetch(conn: Connection) -> list[str]:
            rows = await conn.fetch(
                "SELECT pubkey FROM community_admins WHERE community_id = $1 ORDER BY pubkey",
                community_id,
            )
            return [row["pubkey"] for row in rows]

        return await run(fetch)
    if len(args) != 1 or len(args[0]) != 64 or any(c not in "0123456789abcdef" for c in args[0]):
        raise AdminRefused(f"{method} takes one pubkey (64 hex or an npub)")
    pubkey = args[0]

    async def change(conn: Connection) -> None:
        if method == "addadmin":
            await conn.execute(
                "INSERT INTO community_admins (community_id, pubkey) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                community_id, pubkey,
            )  # fmt: skip
        else:
            await conn.execute(
                "DELETE FROM community_admins WHERE community_id = $1 AND pubkey = $2",
                community_id, pubkey,
            )  # fmt: skip

    await run(change)
    return True
