"""Model folders: ``models/<name>`` registered with ComfyUI's ``folder_paths``, so
extra_model_paths.yaml entries for the same name keep working and the pickers list the files."""

from __future__ import annotations

import os
from collections.abc import Iterable

import folder_paths


def register_model_folder(name: str, extensions: Iterable[str] = (), extra_paths: Iterable[str] = ()) -> None:
    """Add ``models/<name>`` (and ``extra_paths``) to the folder ``name``; idempotent. ``extensions``
    are the file endings ComfyUI lists there (none for folders of model directories)."""
    for path in (os.path.join(folder_paths.models_dir, name), *extra_paths):
        folder_paths.add_model_folder_path(name, path)
    folder_paths.folder_names_and_paths[name][1].update(extensions)
