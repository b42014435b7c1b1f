"""Kind ranges of NIP-01 and the special kinds the relay treats differently."""

from __future__ import annotations

from enum import Enum

DELETION = 5
AUTH = 22242
REPO_ANNOUNCEMENT = 30617
REPO_STATE = 30618
PULL_REQUEST = 1618
PULL_REQUEST_UPDATE = 1619
PATCH = 1617
ISSUE = 1621
# NIP-34 status of an issue, patch or pull request.
STATUS_OPEN = 1630
STATUS_APPLIED = 1631  # applied / merged (patches, pull requests), resolved (issues)
STATUS_CLOSED = 1632
STATUS_DRAFT = 1633
HTTP_AUTH = 27235


class Storage(Enum):
    REGULAR = "regular"
    REPLACEABLE = "replaceable"
    EPHEMERAL = "ephemeral"
    ADDRESSABLE = "addressable"


def storage_class(kind: int) -> Storage:
    if kind in (0, 3) or 10000 <= kind < 20000:
        return Storage.REPLACEABLE
    if 20000 <= kind < 30000:
        return Storage.EPHEMERAL
    if 30000 <= kind < 40000:
        return Storage.ADDRESSABLE
    return Storage.REGULAR
