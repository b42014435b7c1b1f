"""The root of the failures an operator reads: `relay` prints the message and exits.

Each subclass names its exit status, so the command line matches one type rather than a
list: 2 for a setting or argument the relay cannot use (and for what stops it at start-up:
a port in use, a database it cannot reach, a data directory it cannot write or another
relay holds), 1 for anything else that stopped the command (a failure of the database
while working, a migration, the object store's probe, a closed output, refused lines).

A message never shows a URL's password: `redact_urls` replaces it, and `relay` passes every
message it prints through it.
"""

from __future__ import annotations

import re

EXIT_FAILURE = 1
EXIT_CONFIG = 2


class OperatorError(Exception):
    """A failure with a one-line message for the operator."""

    exit_status = EXIT_FAILURE
    prefix = ""  # printed before the message: "relay: <prefix><message>"


class StartupError(OperatorError):
    """The relay cannot start with what a setting names (the message names the setting):
    the port is in use, the address is not this host's, the database cannot be reached,
    the data directory cannot be written or is in use by another relay."""

    exit_status = EXIT_CONFIG


# scheme://user:password@ (the password up to the last @ before a space or quote) and a
# password=... query parameter, as libpq and asyncpg read them.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]+@")
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&\s'\"]+", re.IGNORECASE)
REDACTED = "***"


def redact_urls(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    text = _USERINFO.sub(rf"\1:{REDACTED}@", text)
    return _PASSWORD_PARAM.sub(rf"\1{REDACTED}", text)
