"""The NIP-11 relay information document; it lists only what this relay really does."""

from __future__ import annotations

from typing import Any

from relay import __version__
from relay.config import Settings

# NIP-01 basic protocol, 09 deletion, 11 this document, 34 git repositories (hosted: clone
# and push over smart HTTP), 40 expiration, 42 AUTH, 45 COUNT, 50 search, 70 protected events,
# 77 negentropy, 86 relay management.
SUPPORTED_NIPS = (1, 9, 11, 34, 40, 42, 45, 50, 70, 77, 86)
# GRASP-01: git repositories hosted for the kind 30617 announcements that list this relay.
SUPPORTED_GRASPS = ("GRASP-01",)
# Which announcements provision a repository, by RELAY_GIT_PROVISION.
REPO_ACCEPTANCE_CRITERIA = {
    "listed": (
        "A git repository is provisioned for a kind 30617 announcement whose clone tag lists "
        "this relay's git URL for it, https://<host>/<npub>/<repo>.git; other announcements "
        "are stored as plain events and host nothing."
    ),
    "any": (
        "A git repository is provisioned for every valid kind 30617 announcement, served at "
        "https://<host>/<npub>/<repo>.git."
    ),
}
# NIP-11 `software`: the URL of the project's repository (pyproject.toml names none).
SOFTWARE_URL = "https://github.com/relay-project/relay"


def members_only(doc: dict[str, Any]) -> None:
    """What a members-only community's document says besides: AUTH first, writes for
    members only, NIP-43 (join with an invite, the relay's membership list)."""
    doc["limitation"] = {**doc["limitation"], "auth_required": True, "restricted_writes": True}
    doc["supported_nips"] = sorted({*doc["supported_nips"], 43})


def information_document(settings: Settings, relay_pubkey: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": settings.name,
        "description": settings.description,
        "pubkey": settings.admin_pubkey or relay_pubkey,
        "self": relay_pubkey,
        "supported_nips": list(SUPPORTED_NIPS),
        "supported_grasps": list(SUPPORTED_GRASPS),
        "repo_acceptance_criteria": REPO_ACCEPTANCE_CRITERIA[settings.git_provision],
        "software": SOFTWARE_URL,
        "version": __version__,
        "limitation": settings.limits.nip11(),
    }
    if settings.contact:
        doc["contact"] = settings.contact
    return doc
