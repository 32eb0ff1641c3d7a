"""What a failed batch item means for the rest of the batch: retry elsewhere, record once, or
wait for the worker to come back.

ComfyUI reports a node's exception by type name and message only; out-of-memory, device and
connection errors pass on another try (or another GPU), while a bad input or an invalid
setting fails the same way every time and is recorded once.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from . import workflow
from .errors import CliError, EditTimeout, ExecutionFailed, RetryableError, UnreachableError

TRANSIENT_PATTERN = re.compile(
    r"out ?of ?memory|OutOfMemory|CUDA error|cuDNN|HIP error|MPS backend|device-side|ConnectionError|"
    r"ConnectionResetError|BrokenPipe|TimeoutError|InterruptProcessingException|interrupted",
    re.IGNORECASE)
BACKOFF_CAP_S = 60.0


class FailureKind(str, enum.Enum):
    """How the batch treats a failed attempt."""

    TRANSIENT = "transient"
    """Retried after a backoff, preferably on another worker (OOM, lost connection, timeout)."""
    DETERMINISTIC = "deterministic"
    """Recorded once with its message, never retried (validation, bad input, missing file)."""
    WORKER_DOWN = "worker_down"
    """The worker itself is gone: the item goes back to the queue without spending an attempt
    and the worker is re-checked until it answers again."""


class ClassifiedError(CliError):
    """A failure already classified where it happened (e.g. inside a Ray actor)."""

    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


def execution_failed(data: dict[str, Any], prompt: workflow.Prompt) -> ExecutionFailed:
    """ComfyUI's ``execution_error`` payload as an exception that keeps the exception type."""
    return ExecutionFailed(workflow.describe_execution_error(data, prompt),
                           str(data.get("exception_type", "")), str(data.get("exception_message", "")))


def classify(err: BaseException) -> FailureKind:
    """The kind of one failed attempt (see :class:`FailureKind`)."""
    if isinstance(err, ClassifiedError):
        return err.kind
    if isinstance(err, UnreachableError):
        return FailureKind.WORKER_DOWN
    if isinstance(err, ExecutionFailed):
        text = f"{err.exception_type} {err.exception_message}"
        return FailureKind.TRANSIENT if TRANSIENT_PATTERN.search(text) else FailureKind.DETERMINISTIC
    if isinstance(err, EditTimeout):
        return FailureKind.TRANSIENT
    if isinstance(err, CliError):
        return FailureKind.TRANSIENT if isinstance(err, RetryableError) else FailureKind.DETERMINISTIC
    if isinstance(err, (ConnectionError, TimeoutError)):
        return FailureKind.TRANSIENT
    if isinstance(err, OSError):  # a full disk or a vanished file: may pass later
        return FailureKind.TRANSIENT
    return FailureKind.DETERMINISTIC


def backoff_s(attempt: int, base_s: float) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (exponential, capped)."""
    return min(base_s * (2 ** max(attempt - 1, 0)), BACKOFF_CAP_S)
