"""Test-only ComfyUI custom nodes (never shipped): tiny checkpoints instead of real weights.

The host harness links this directory into ``custom_nodes/`` (as ``psg_test_nodes``) next
to the pack, so API-format prompts, in-process and over HTTP, can say
``{"class_type": "PSGTestTinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}}``
where a real workflow says ``CheckpointLoaderSimple``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ComfyUI imports this package by file path; make ``psg_testing`` and the ``psg_cli`` it uses
# importable (a no-op under pytest, needed inside a server process). Appended: ComfyUI's own
# top-level modules (its nodes.py before this repo's nodes package) keep precedence.
for _folder in Path(__file__).resolve().parents[2:4]:  # tests/, the repository root
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from psg_testing.tiny_models import FAMILIES, build_tiny  # noqa: E402

CATEGORY = "_for_testing/psg"


class PSGTestTinyCheckpoint(io.ComfyNode):
    """MODEL, CLIP and VAE of a tiny seeded model (see psg_testing.tiny_models)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTestTinyCheckpoint",
            display_name="PSG test: tiny checkpoint",
            category=CATEGORY,
            inputs=[
                io.Combo.Input("family", options=list(FAMILIES), default="sd15"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, family: str, seed: int) -> io.NodeOutput:
        tiny = build_tiny(family, seed)
        return io.NodeOutput(tiny.model, tiny.clip, tiny.vae)


class PSGTestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [PSGTestTinyCheckpoint]


def comfy_entrypoint() -> PSGTestNodes:
    return PSGTestNodes()
