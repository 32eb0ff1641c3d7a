"""LPIPS loader node: weights from ComfyUI's ``models/lpips`` folder, offline."""

from __future__ import annotations

from comfy_api.latest import io

from .pipelines.lpips import NETS, NODE, load
from .psg_types import PSGLpipsType

__all__ = ["PSGLPIPSLoader", "load"]


class PSGLPIPSLoader(io.ComfyNode):
    """Loads the LPIPS perceptual distance used by the perceptual-guidance sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGLPIPSLoader",
            display_name=NODE,
            category="PSG/loaders",
            description=(
                "Loads LPIPS (Zhang et al. 2018) offline: the backbone weights are read from ComfyUI's "
                "models/lpips folder (or extra_model_paths.yaml 'lpips' paths); the linear heads ship with "
                "the lpips package. Nothing is downloaded; a missing file gives a message saying which one."
            ),
            inputs=[
                io.Combo.Input("net", options=list(NETS), default="alex",
                               tooltip="Backbone: alex (default, fast, the paper's choice), vgg (closer to "
                                       "human judgement for edits, slower), squeeze (smallest)."),
            ],
            outputs=[PSGLpipsType.Output(display_name="lpips",
                                         tooltip="The LPIPS network for the PSG Perceptual Sampler and PSG "
                                                 "Edit.")],
        )

    @classmethod
    def execute(cls, net: str) -> io.NodeOutput:
        return io.NodeOutput(load(net))
