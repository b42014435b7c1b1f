"""The NIP-11 relay information document; it lists only what this relay really does."""

from __future__ import annotations

from typing import Any

from relay import __version__
from relay.config import Settings

# NIP-01 basic protocol, 09 deletion, 11 this document, 34 git repositories (hosted: clone
# and push over smart HTTP), 40 expiration, 42 AUTH, 45 COUNT, 70 protected events.
SUPPORTED_NIPS = (1, 9, 11, 34, 40, 42, 45, 70)
SOFTWARE = "relay"


def information_document(settings: Settings, relay_pubkey: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": settings.name,
        "description": settings.description,
        "pubkey": settings.admin_pubkey or relay_pubkey,
        "self": relay_pubkey,
        "supported_nips": list(SUPPORTED_NIPS),
        "software": SOFTWARE,
        "version": __version__,
        "limitation": settings.limits.nip11(),
    }
    if settings.contact:
        doc["contact"] = settings.contact
    return doc
