"""A multi-tenant Nostr relay on trio that hosts git repositories on object storage."""

__version__ = "0.1.0"
