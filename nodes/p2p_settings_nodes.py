"""PSG Prompt-to-Prompt: the attention-control settings the P2P sampler follows."""

from __future__ import annotations

from comfy_api.latest import io

from ..psg_core import attention_control as control
from . import validation
from .pipelines.attention_patches import SELF_LAYERS, P2PSettings
from .pipelines.p2p import SETTINGS_NODE
from .psg_types import PSGP2PType


class PSGPromptToPrompt(io.ComfyNode):
    """Settings node: how the edit branch's attention follows the source branch's."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        window = {"min": 0.0, "max": 1.0, "step": 0.05}
        return io.Schema(
            node_id="PSGPromptToPrompt",
            display_name=SETTINGS_NODE,
            category="PSG/prompt-to-prompt",
            description=(
                "Prompt-to-prompt attention control (Hertz et al.): during a window of steps the edit branch "
                "takes the source branch's attention maps, so layout and identity stay while the words "
                "change. replace = word swap, refine = added words (aligned tokens), reweight = strengthen "
                "or weaken words. Blend words give LocalBlend and an edited-region mask from the attention "
                "maps."
            ),
            inputs=[
                io.Combo.Input(
                    "mode", options=[m.value for m in control.P2PMode], default=control.P2PMode.REPLACE.value,
                    tooltip="replace: swap words (same token count, else refine is used and logged); refine: "
                            "the edit prompt adds or changes words, equal tokens are aligned; reweight: like "
                            "refine, and the reweight_words are scaled."),
                io.Float.Input(
                    "cross_window", default=control.DEFAULT_CROSS_WINDOW, **window,
                    tooltip="Fraction of the steps (from the first) in which the edit prompt's "
                            "cross-attention is taken from the source. Higher keeps more layout; 0.8 as in "
                            "the paper."),
                io.Float.Input(
                    "self_window", default=control.DEFAULT_SELF_WINDOW, **window,
                    tooltip="Fraction of the steps in which the edit branch's self-attention is the "
                            "source's (at the coarse layers). Higher keeps more structure and shape; 0.2-0.6 "
                            "typical."),
                io.Combo.Input(
                    "self_layers", options=list(SELF_LAYERS), default="1/4",
                    tooltip="Which self-attention layers are replaced: those whose side is at most this "
                            "fraction of the latent side (1/4 as in the paper), or all. 1/2 and all keep "
                            "more "
                            "structure but hold full-resolution attention maps in memory (GBs at 512 px and "
                            "above)."),
                io.String.Input(
                    "reweight_words", default="",
                    tooltip="Words of the edit prompt to strengthen or weaken, comma-separated, each with an "
                            "optional factor: 'tiger:2, striped:0.5'. Used in any mode; required for "
                            "reweight."),
                io.Float.Input(
                    "reweight_factor", default=2.0, min=-10.0, max=10.0, step=0.1,
                    tooltip="Factor for reweight words given without ':factor'. >1 strengthens, <1 weakens "
                            "the word."),
                io.String.Input(
                    "blend_words", default="",
                    tooltip="Words that name the edited object in the source and/or edit prompt, e.g. 'cat, "
                            "tiger'. Their attention gives the edited region: outside it the edit keeps the "
                            "photo (LocalBlend), and it is the MASK output. Empty = no blending."),
                io.Float.Input(
                    "blend_threshold", default=control.DEFAULT_BLEND_THRESHOLD, **window,
                    tooltip="Part of the strongest attention above which a pixel counts as edited; lower = "
                            "larger region. 0.3 as in the paper."),
                io.Float.Input(
                    "blend_start", default=control.DEFAULT_BLEND_START, **window,
                    tooltip="Fraction of the steps after which LocalBlend starts (the maps are unreliable at "
                            "the noisiest steps)."),
            ],
            outputs=[PSGP2PType.Output(display_name="p2p",
                                       tooltip="Prompt-to-prompt settings for the PSG P2P Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, cross_window: float | None = None, self_window: float | None = None,
                        reweight_factor: float | None = None, blend_threshold: float | None = None,
                        blend_start: float | None = None) -> bool | str:
        return validation.check_number_inputs(cls, locals())  # NaN / inf / range, before anything runs

    @classmethod
    def execute(cls, mode, cross_window, self_window, self_layers, reweight_words, reweight_factor,
                blend_words, blend_threshold, blend_start) -> io.NodeOutput:
        settings = P2PSettings(control.P2PMode(mode), cross_window, self_window, self_layers, reweight_words,
                               reweight_factor, blend_words, blend_threshold, blend_start)
        settings.validate(SETTINGS_NODE)
        return io.NodeOutput(settings)
