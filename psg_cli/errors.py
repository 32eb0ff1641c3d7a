"""The one exception the CLI shows to users: a single actionable message, no traceback."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; ``str(err)`` says what happened and what to do."""


class RetryableError(CliError):
    """A failure that may pass on another attempt or another server (connection lost, ...)."""


class UnreachableError(RetryableError):
    """The server cannot be reached at all: other servers should take over its work."""


class ExecutionFailed(RetryableError):
    """A node raised while the workflow ran; ``exception_type`` tells an out-of-memory (worth
    another try elsewhere) from a bad input (fails the same way every time)."""

    def __init__(self, message: str, exception_type: str = "", exception_message: str = "") -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.exception_message = exception_message


class EditTimeout(RetryableError):
    """No result within ``--timeout``; the prompt was interrupted and taken off the queue."""


class PromptRejected(CliError):
    """ComfyUI refused the workflow before running it (its validation); ``error`` and
    ``node_errors`` are ComfyUI's own payload, as /prompt answers with HTTP 400."""

    def __init__(self, message: str, error: dict, node_errors: dict) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors
