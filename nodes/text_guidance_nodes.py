"""PSG Text Guidance Optimization: per-step nulls or offsets that make guided sampling retrace an
inversion."""

from __future__ import annotations

from comfy_api.latest import io

from ..psg_core.null_text import NullTextSchedule
from . import host, validation
from .pipelines.inversion import optimize_text
from .psg_types import TEXT_MODE_NAMES, PSGInversionType, TextMode


class PSGTextGuidanceOptimize(io.ComfyNode):
    """Fits per-step null embeddings (or latent offsets) so guided sampling retraces the inversion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTextGuidanceOptimize",
            display_name="PSG Text Guidance Optimization",
            category="PSG/inversion",
            description=(
                "Makes guided sampling reproduce the inverted image. null-text optimization tunes one null "
                "embedding per step (Mokady et al.; best fidelity, slowest); negative-prompt uses the source "
                "prompt as the null (free); direct offsets store the per-step latent drift (fast, exact)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The same model the inversion was made with."),
                PSGInversionType.Input("inversion", tooltip="The output of PSG DDIM Inversion."),
                io.Conditioning.Input("source", tooltip="The source prompt used for the inversion."),
                io.Conditioning.Input("null", tooltip="The null (empty) prompt, the starting point of the "
                                                      "optimization."),
                io.Combo.Input("mode", options=TEXT_MODE_NAMES, default=TextMode.NULL_TEXT.value,
                               tooltip="'null-text optimization' (best), 'negative-prompt' (free) or "
                                       "'direct offsets' (fast)."),
                io.Float.Input("guidance_scale", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="The CFG scale sampling will use on the source prompt; 7.5 as in the "
                                       "paper."),
                io.Int.Input("inner_steps", default=10, min=1, max=100,
                             tooltip="Null-text only. The budget per step, as in prompt-to-prompt: 10 = at "
                                     "most 12 model calls (1 source + 10 Adam steps + 1 final for the "
                                     "reference schedule; the secant default usually stops after 3-4)."),
                io.Float.Input("tolerance", default=1e-4, min=0.0, max=1.0, step=1e-5, round=1e-7,
                               tooltip="Null-text, secant schedule: stop a step once its landing error is "
                                       "below this fraction of the latent's size (1e-4). The reference "
                                       "schedule uses prompt-to-prompt's own thresholds."),
                io.Combo.Input("schedule", options=[s.value for s in NullTextSchedule],
                               default=NullTextSchedule.SECANT.value, optional=True,
                               tooltip="Null-text only. secant (default): closes the guidance drift in far "
                                       "fewer model calls. reference: prompt-to-prompt's Adam schedule, for "
                                       "comparison with published results."),
            ],
            outputs=[
                PSGInversionType.Output(display_name="inversion",
                                        tooltip="The inversion carrying the per-step nulls or offsets; plug "
                                                "it into the PSG guider."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        guidance_scale: float | None = None,
        tolerance: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, inversion, source, null, mode, guidance_scale, inner_steps, tolerance,
                schedule="secant") -> io.NodeOutput:
        node = "PSG Text Guidance Optimization"
        host.embedding_of(source, "source", node)
        host.embedding_of(null, "null", node)
        inv = optimize_text(model, inversion, source, null, mode=mode, guidance_scale=guidance_scale,
                            inner_steps=inner_steps, tolerance=tolerance, node=node, schedule=schedule)
        return io.NodeOutput(inv)
