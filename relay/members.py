"""`relay member` and a community's access mode, from the operator's shell.

    relay member add|remove HOST NPUB      make or end a membership (NIP-43 events published)
    relay member list HOST                 the members, oldest first: hex, npub, how, since
    relay member invite HOST [--uses N] [--expires 7d]   a new invite code (prints it)
    relay community set HOST access=members|public
    relay community add HOST --members-only

Each runs through the same code as the relay (relay.server.membership) and writes the same
tables; running pods see the change within a second (at once when told through Redis).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.admin import AdminRefused, key_param, shell_moderation
from relay.config import ConfigError, Settings
from relay.keys import KEY_FILE
from relay.protocol import access
from relay.protocol.bech32 import hex_to_npub
from relay.server.membership import Membership
from relay.transfer import open_community

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_INVITE_USES = 1
DEFAULT_INVITE_EXPIRES = "7d"
_DURATION = re.compile(r"^(\d{1,9})([smhdw])$")


def parse_duration(text: str) -> int | None:
    """Seconds of `30m`, `12h`, `7d`, `2w` (`never`: None)."""
    if text == "never":
        return None
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise AdminRefused(f"--expires {text!r}: use a number and s, m, h, d or w (7d), or never")
    return int(found.group(1)) * DURATION_UNITS[found.group(2)]


def parse_access(setting: str) -> str:
    name, _, value = setting.partition("=")
    if name != "access" or value not in access.ACCESS_MODES:
        raise AdminRefused(f"{setting!r}: the setting is access=members or access=public")
    return value


async def member_command(
    settings: Settings,
    action: str,
    host: str,
    who: str | None,
    uses: int | None = DEFAULT_INVITE_USES,
    expires: str = DEFAULT_INVITE_EXPIRES,
) -> None:
    async with shell_membership(settings, host) as (membership, community_id, name):
        if action == "list":
            for member in await membership.store.members(community_id):
                since = member.added_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                print(f"{member.pubkey} {hex_to_npub(member.pubkey)} {member.via} {since}")
        elif action == "invite":
            seconds = parse_duration(expires)
            expires_at = None if seconds is None else int(time.time()) + seconds
            invite = await membership.invite(community_id, uses, expires_at)
            print(invite.code)
            limits = f"{'unlimited' if uses is None else uses} use(s), expires " + (
                "never" if expires_at is None else f"in {expires}"
            )
            print(f"relay member invite on {name}: {limits}", file=sys.stderr)
        else:
            await _change(membership, community_id, action, who, name)


@asynccontextmanager
async def shell_membership(
    settings: Settings, host: str
) -> AsyncIterator[tuple[Membership, int, str]]:
    """The membership of the community `host`, as a pod's (see admin.shell_moderation)."""
    async with (
        open_community(settings, host) as (db, community_id, name),
        shell_moderation(settings, db) as moderation,
    ):
        if moderation.membership is None:
            raise ConfigError(
                f"the relay's key is not in {settings.data_path / KEY_FILE}: set"
                " RELAY_SECRET_KEY or RELAY_DATA_DIR as the relay has them (membership"
                " changes are published signed with it)"
            )
        yield moderation.membership, community_id, name


async def _change(
    membership: Membership, community_id: int, action: str, who: str | None, name: str
) -> None:
    if not who:
        raise AdminRefused(f"member {action} needs the member's npub (or hex pubkey)")
    pubkey = key_param(who)
    if len(pubkey) != 64 or any(c not in "0123456789abcdef" for c in pubkey):
        raise AdminRefused(f"{who!r} is not a pubkey (64 hex or an npub)")
    if action == "add":
        done = await membership.add(community_id, pubkey)
        print(f"{pubkey} is {'now' if done else 'already'} a member of {name}")
    else:
        done = await membership.remove(community_id, pubkey)
        print(f"{pubkey} is {'no longer' if done else 'not'} a member of {name}")


async def access_command(settings: Settings, host: str, mode: str) -> None:
    async with shell_membership(settings, host) as (membership, community_id, name):
        await membership.set_access(community_id, mode)
    print(f"{name}: access={mode}")
