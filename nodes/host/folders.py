"""Model folders: ``models/<name>`` registered with ComfyUI's ``folder_paths``, so
extra_model_paths.yaml entries for the same name keep working and the pickers list the files;
and the lookups a node's model picker needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import folder_paths

NO_MODEL = "none"
"""The picker entry for "no model" (the metric it serves is then reported unavailable)."""


def register_model_folder(name: str, extensions: Iterable[str] = (), extra_paths: Iterable[str] = ()) -> None:
    """Add ``models/<name>`` (and ``extra_paths``) to the folder ``name``; idempotent. ``extensions``
    are the file endings ComfyUI lists there (none for folders of model directories)."""
    for path in (os.path.join(folder_paths.models_dir, name), *extra_paths):
        folder_paths.add_model_folder_path(name, path)
    folder_paths.folder_names_and_paths[name][1].update(extensions)


def model_entries(folder: str, accepts: Callable[[Path], bool]) -> list[str]:
    """Names of the entries (files or model directories) of a registered folder that ``accepts``
    takes, across all of its paths, first seen first: what a node's model picker lists."""
    found: dict[str, None] = {}
    for base in folder_paths.get_folder_paths(folder):
        if os.path.isdir(base):
            for entry in sorted(os.listdir(base)):
                if accepts(Path(base) / entry):
                    found.setdefault(entry, None)
    return list(found)


def resolve_model_entry(folder: str, name: str, node: str, path: str = "") -> Path | None:
    """The model a node was given: an explicit ``path`` wins, else ``name`` in the registered folder;
    an empty name or ``none`` -> None."""
    if path.strip():
        p = Path(path.strip()).expanduser()
        if not p.exists():
            raise ValueError(f"{node}: the path {p} does not exist.")
        return p
    if name in ("", NO_MODEL):
        return None
    for base in folder_paths.get_folder_paths(folder):
        candidate = Path(base) / name
        if candidate.exists():
            return candidate
    raise ValueError(f"{node}: no model '{name}' in models/{folder} "
                     f"({', '.join(folder_paths.get_folder_paths(folder))}).")
