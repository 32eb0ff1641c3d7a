"""Extra ComfyUI model folders for tests that run the in-process host: the host keeps ComfyUI's
own ``models/`` directory, which must stay untouched, so test files (an LPIPS backbone, random
TAESD weights) live in the host's base dir and are registered with ``folder_paths`` for the
duration of a test or module."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def extra_model_folder(kind: str, path: Path) -> Iterator[Path]:
    """``folder_paths.add_model_folder_path(kind, path)`` for the block, removed afterwards (only if
    this block added it, so nested or repeated registrations of the same folder are safe)."""
    import folder_paths

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    entry = str(path)
    added = entry not in folder_paths.folder_names_and_paths.get(kind, ([], set()))[0]
    if added:
        folder_paths.add_model_folder_path(kind, entry)
    try:
        yield path
    finally:
        if added:
            paths = folder_paths.folder_names_and_paths[kind][0]
            if entry in paths:
                paths.remove(entry)
