"""The one exception the CLI shows to users: a single actionable message, no traceback."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; ``str(err)`` says what happened and what to do."""


class RetryableError(CliError):
    """A failure that may pass on another attempt or another server (connection lost, ...)."""


class UnreachableError(RetryableError):
    """The server cannot be reached at all: other servers should take over its work."""
