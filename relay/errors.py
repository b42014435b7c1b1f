"""The root of the failures an operator reads: `relay` prints the message and exits.

Each subclass names its exit status, so the command line matches one type rather than a
list: 2 for a setting or argument the relay cannot use, 1 for anything else that stopped
the command (the database, a migration, the object store's probe, a closed output).
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_CONFIG = 2


class OperatorError(Exception):
    """A failure with a one-line message for the operator."""

    exit_status = EXIT_FAILURE
    prefix = ""  # printed before the message: "relay: <prefix><message>"
