"""Triple-prompt GUIDER node: null / source / edit in one model call, combined by the core's formula."""

from __future__ import annotations

from comfy_api.latest import io

from . import validation
from .pipelines.guider import NODE, make_guider
from .psg_types import PSGInversionType


class PSGTriplePromptGuider(io.ComfyNode):
    """GUIDER node for SamplerCustomAdvanced: null / source / edit prompts, one batched call."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTriplePromptGuider",
            display_name=NODE,
            category="PSG/sampling",
            description=(
                "Text guidance over three prompts: x0 = null + w_edit (edit - null) + w_source (source - "
                "null). w_source = 0 is plain CFG on the edit prompt; w_edit = 0 rebuilds the source image. "
                "With an optimized inversion it uses the per-step null embeddings / offsets so the unedited "
                "parts stay."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (the one used for the inversion)."),
                io.Conditioning.Input("null", tooltip="The null (empty) prompt; replaced per step by the "
                                                      "optimized nulls when an inversion carries them."),
                io.Conditioning.Input("source", tooltip="The caption of the real image (source prompt)."),
                io.Conditioning.Input("edit", tooltip="The edited caption (target prompt)."),
                io.Float.Input("w_source", default=0.0, min=-30.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Weight of (source - null). 0 = plain CFG on the edit prompt; small "
                                       "negative values push away from the source, positive values keep more "
                                       "of it."),
                io.Float.Input("w_edit", default=7.5, min=-30.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Weight of (edit - null), the usual CFG scale; 0 reconstructs the "
                                       "source. 5-10 typical."),
                PSGInversionType.Input("inversion", optional=True,
                                       tooltip="Optional: an inversion from PSG Text Guidance Optimization, "
                                               "for its per-step nulls or offsets. Sample with the same "
                                               "steps and scheduler."),
            ],
            outputs=[io.Guider.Output(tooltip="A GUIDER for SamplerCustomAdvanced (with the PSG Perceptual "
                                              "Sampler or any sampler).")],
        )

    @classmethod
    def validate_inputs(
        cls,
        w_source: float | None = None,
        w_edit: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, null, source, edit, w_source, w_edit, inversion=None) -> io.NodeOutput:
        return io.NodeOutput(make_guider(model, null, source, edit, w_source, w_edit, inversion))
