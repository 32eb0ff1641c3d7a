"""ComfyUI-PSG: real-image editing with perceptual-similarity guidance (arXiv 2312.06680).

ComfyUI imports this file from ``custom_nodes/``. Importing it without ComfyUI (linters,
core tests, ``python -m psg_cli``) must not crash, so the host-only imports are guarded.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

WEB_DIRECTORY = "./web"
# No NODE_CLASS_MAPPINGS here: ComfyUI's loader (nodes.load_custom_node) takes the classic
# path whenever that name exists, even empty, and would then never call comfy_entrypoint.

comfy_entrypoint = None
# Imported as a plain module, not as a package (e.g. pytest collecting a checkout whose folder name
# is not a Python name, such as ComfyUI-PSG), there are no submodules to import.
if __package__:
    try:
        from comfy_api.latest import ComfyExtension  # noqa: F401  (host present?)
    except ImportError:  # not inside ComfyUI
        pass
    else:
        from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
