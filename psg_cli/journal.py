"""The batch journal: an append-only JSON-lines record of every item's state.

Why append-only: a killed client loses at most the line it was writing (a torn last line is
skipped on reading), nothing already written is rewritten, and the cost per item stays the
same at 10,000 items. Why keyed: an item's ``key`` hashes everything that changes its result
(photo and mask bytes, prompts, the workflow graph, checkpoint, every ``--set``, guidance VAE,
seed, photo working and output size, this pack's version), so a resumed run reuses a result
only when it would be the same.

One line per event, ``{"t", "id", "key", "state", ...}``:

``submitted``  a server queued the edit: ``worker`` (server URL), ``prompt_id``, ``prompt``,
               ``overrides``; a restarted client collects it from that server's /history
``retry``      a transient failure: ``kind``, ``error``, ``attempt``, ``worker``
``ok``         done: ``record`` (the results item: output paths relative to the journal's folder)
``failed``     given up: ``record`` with ``error`` and ``kind``
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import PACK_ROOT

logger = logging.getLogger(__name__)
SCHEMA = "psg-journal/1"
FINAL_STATES = ("ok", "failed")


def pack_version() -> str:
    """This pack's version (pyproject.toml), part of every item key."""
    try:
        text = (PACK_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def item_key(*, photo: Path, mask: Path | None, mask_box: list[float] | None, source: str, target: str,
             template: dict[str, Any], ckpt: str | None, seed: int | None, guidance_vae: str | None,
             sets: list[str], working_size: int | None = None, output_size: str | None = None,
             version: str | None = None) -> str:
    """Hash of everything that changes one item's result (see the module docstring)."""
    material = {
        "photo": file_digest(photo), "mask": file_digest(mask), "mask_box": mask_box,
        "source": source, "target": target, "workflow": template, "ckpt": ckpt, "seed": seed,
        "guidance_vae": guidance_vae, "sets": list(sets), "working_size": working_size,
        "output_size": output_size, "pack": version or pack_version(),
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete entry, in order; a torn or garbled line (a killed writer) is skipped."""
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: skipping an incomplete line (a run was killed while writing)",
                               path, number)
                continue
            if isinstance(entry, dict) and "id" in entry and "state" in entry:
                yield entry


def latest_by_item(path: Path) -> dict[str, dict[str, Any]]:
    """The last entry of each item id (whatever its key)."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in read_entries(path):
        latest[str(entry["id"])] = entry
    return latest


def latest_by_key(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last entry of each (item id, key)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in read_entries(path):
        latest[(str(entry["id"]), str(entry.get("key")))] = entry
    return latest


class Journal:
    """Appends entries, one flushed (and fsynced) line each, from any thread."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = path.open("a", encoding="utf-8")
        if path.stat().st_size and not _ends_with_newline(path):
            self._fh.write("\n")  # a killed writer left half a line: start clean

    def append(self, item_id: str, key: str, state: str, **fields: Any) -> dict[str, Any]:
        entry = {"t": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                 "id": item_id, "key": key, "state": state, **fields}
        line = json.dumps(entry, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        return entry

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
