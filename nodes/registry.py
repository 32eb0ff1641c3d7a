"""The list of node classes this pack exposes (one place to add a node)."""

from __future__ import annotations

from comfy_api.latest import io


def all_nodes() -> list[type[io.ComfyNode]]:
    return []
