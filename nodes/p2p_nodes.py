"""Prompt-to-prompt nodes: the attention-control settings and the two-branch sampler."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..psg_core import attention_control as control
from ..psg_core.perceptual import DEFAULT_SCALE
from . import validation
from .attention_patches import SELF_LAYERS, P2PSettings
from .pipelines.p2p import NODE, SETTINGS_NODE, MaskUse, make_perceptual, run_p2p
from .psg_types import PSGInversionType, PSGLpipsType

__all__ = ["NODES", "make_perceptual", "run_p2p"]

PSGP2PType = io.Custom("PSG_P2P")
LATENT_TO_PIXELS = 8
"""SD1.x / SD2.x / SDXL VAEs: one latent pixel is 8x8 image pixels (the MASK output's size)."""


class PSGTextEncode(io.ComfyNode):
    """CLIP Text Encode that also passes its text on: the P2P sampler aligns the prompts' tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTextEncode",
            display_name="PSG Text Encode",
            category="PSG/prompt-to-prompt",
            description=("Like CLIP Text Encode, and also outputs the text itself, so one prompt box feeds both the "
                         "inversion (CONDITIONING) and the PSG P2P Sampler (which aligns the prompts' tokens)."),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning", tooltip="The encoded prompt, as from CLIP Text Encode."),
                io.String.Output(display_name="text", tooltip="The prompt text, for the PSG P2P Sampler."),
            ],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        if clip is None or not hasattr(clip, "tokenize"):
            raise ValueError("PSG Text Encode: the 'clip' input is not a CLIP (connect the checkpoint's CLIP output).")
        return io.NodeOutput(clip.encode_from_tokens_scheduled(clip.tokenize(text)), text)


class PSGPromptToPrompt(io.ComfyNode):
    """Settings node: how the edit branch's attention follows the source branch's."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGPromptToPrompt",
            display_name=SETTINGS_NODE,
            category="PSG/prompt-to-prompt",
            description=(
                "Prompt-to-prompt attention control (Hertz et al.): during a window of steps the edit branch "
                "takes the source branch's attention maps, so layout and identity stay while the words change. "
                "replace = word swap, refine = added words (aligned tokens), reweight = strengthen or weaken "
                "words. Blend words give LocalBlend and an edited-region mask from the attention maps."
            ),
            inputs=[
                io.Combo.Input("mode", options=[m.value for m in control.P2PMode], default=control.P2PMode.REPLACE.value, tooltip="replace: swap words (same token count, else refine is used and logged); refine: the edit prompt adds or changes words, equal tokens are aligned; reweight: like refine, and the reweight_words are scaled."),
                io.Float.Input("cross_window", default=control.DEFAULT_CROSS_WINDOW, min=0.0, max=1.0, step=0.05, tooltip="Fraction of the steps (from the first) in which the edit prompt's cross-attention is taken from the source. Higher keeps more layout; 0.8 as in the paper."),
                io.Float.Input("self_window", default=control.DEFAULT_SELF_WINDOW, min=0.0, max=1.0, step=0.05, tooltip="Fraction of the steps in which the edit branch's self-attention is the source's (at the coarse layers). Higher keeps more structure and shape; 0.2-0.6 typical."),
                io.Combo.Input("self_layers", options=list(SELF_LAYERS), default="1/4", tooltip="Which self-attention layers are replaced: those whose side is at most this fraction of the latent side (1/4 as in the paper), or all. 1/2 and all keep more structure but hold full-resolution attention maps in memory (GBs at 512 px and above)."),
                io.String.Input("reweight_words", default="", tooltip="Words of the edit prompt to strengthen or weaken, comma-separated, each with an optional factor: 'tiger:2, striped:0.5'. Used in any mode; required for reweight."),
                io.Float.Input("reweight_factor", default=2.0, min=-10.0, max=10.0, step=0.1, tooltip="Factor for reweight words given without ':factor'. >1 strengthens, <1 weakens the word."),
                io.String.Input("blend_words", default="", tooltip="Words that name the edited object in the source and/or edit prompt, e.g. 'cat, tiger'. Their attention gives the edited region: outside it the edit keeps the photo (LocalBlend), and it is the MASK output. Empty = no blending."),
                io.Float.Input("blend_threshold", default=control.DEFAULT_BLEND_THRESHOLD, min=0.0, max=1.0, step=0.05, tooltip="Part of the strongest attention above which a pixel counts as edited; lower = larger region. 0.3 as in the paper."),
                io.Float.Input("blend_start", default=control.DEFAULT_BLEND_START, min=0.0, max=1.0, step=0.05, tooltip="Fraction of the steps after which LocalBlend starts (the maps are unreliable at the noisiest steps)."),
            ],
            outputs=[PSGP2PType.Output(display_name="p2p", tooltip="Prompt-to-prompt settings for the PSG P2P Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, cross_window: float | None = None, self_window: float | None = None, reweight_factor: float | None = None, blend_threshold: float | None = None, blend_start: float | None = None) -> bool | str:
        return validation.check_number_inputs(cls, locals())  # NaN / inf / range, before anything runs

    @classmethod
    def execute(cls, mode, cross_window, self_window, self_layers, reweight_words, reweight_factor, blend_words,
                blend_threshold, blend_start) -> io.NodeOutput:
        settings = P2PSettings(control.P2PMode(mode), cross_window, self_window, self_layers, reweight_words, reweight_factor,
                               blend_words, blend_threshold, blend_start)
        settings.validate(SETTINGS_NODE)
        return io.NodeOutput(settings)


class PSGP2PSampler(io.ComfyNode):
    """Two-branch sampler: source branch reconstructs, edit branch edits under attention control."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGP2PSampler",
            display_name=NODE,
            category="PSG/prompt-to-prompt",
            description=(
                "Edits a real photo with prompt-to-prompt: the source branch reconstructs the photo from the "
                "inversion (its per-step nulls, the source prompt as null, or the direct-inversion offsets) while "
                "the edit branch, in the same model call, follows the edit prompt with the triple-prompt guidance "
                "and the source branch's attention. SD1.x, SD2.x and SDXL. Optional LPIPS guidance pulls the "
                "region outside the attention mask back to the photo."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the inversion was made with (SD1.x, SD2.x, SDXL)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the prompts and gives their tokens for the attention alignment."),
                PSGInversionType.Input("inversion", tooltip="From PSG Text Guidance Optimisation (or PSG DDIM Inversion): the source branch retraces it."),
                io.String.Input("source_text", force_input=True, tooltip="The caption of the photo (the source prompt the inversion used), from PSG Text Encode's text output."),
                io.String.Input("edit_text", force_input=True, tooltip="The edited caption (for replace: the source with words swapped), from PSG Text Encode's text output."),
                PSGP2PType.Input("p2p", tooltip="Attention-control settings from PSG Prompt-to-Prompt."),
                io.Float.Input("w_source", default=0.0, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Edit branch: weight of (source - null). 0 = plain CFG on the edit prompt."),
                io.Float.Input("w_edit", default=7.5, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Edit branch: weight of (edit - null), the CFG scale. Must not be 0."),
                io.Vae.Input("vae", optional=True, tooltip="Optional, for perceptual guidance: the model's VAE (or connect guidance_vae too)."),
                io.Image.Input("reference", optional=True, tooltip="Optional, for perceptual guidance: the photo the edit should stay close to."),
                PSGLpipsType.Input("lpips", optional=True, tooltip="Optional, for perceptual guidance: from PSG LPIPS Loader."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001, optional=True, tooltip="Perceptual guidance strength on the edit branch (used when vae, reference and lpips are connected); 0 turns it off."),
                io.Combo.Input("perceptual_mask", options=[m.value for m in MaskUse], default=MaskUse.ATTENTION_MASK.value, optional=True, tooltip="attention mask: LPIPS pulls only outside the blend words' region and the painted mask; painted mask: only outside the painted mask; whole image: everywhere."),
                io.Mask.Input("mask", optional=True, tooltip="Optional painted mask (1 = free to change), e.g. from the mask editor via PSG Fit Image: widens the region the perceptual guidance leaves free."),
                io.Vae.Input("guidance_vae", optional=True, tooltip="Optional: a small VAE (Load VAE -> taesd / taesdxl) used only for the LPIPS gradient."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The edited latent (decode with VAE Decode)."),
                io.Mask.Output(display_name="mask", tooltip="The edited region found from the blend words' attention (1 = edited), image-sized; preview or edit it and reuse it as a MASK. Zeros without blend words."),
                io.Latent.Output(display_name="source_latent", tooltip="The source branch's result: the reconstruction of the photo."),
            ],
        )

    @classmethod
    def validate_inputs(cls, w_source: float | None = None, w_edit: float | None = None, scale: float | None = None) -> bool | str:
        return validation.check_number_inputs(cls, locals())  # NaN / inf / range, before anything runs

    @classmethod
    def execute(cls, model, clip, inversion, source_text, edit_text, p2p, w_source, w_edit, vae=None, reference=None,
                lpips=None, scale=DEFAULT_SCALE, perceptual_mask=MaskUse.ATTENTION_MASK.value, mask=None, guidance_vae=None) -> io.NodeOutput:
        if not isinstance(p2p, P2PSettings):
            raise ValueError(f"{NODE}: the 'p2p' input must come from the {SETTINGS_NODE} node.")
        perceptual = make_perceptual(model, vae, reference, lpips, scale, guidance_vae, inversion)
        edit, source, mask = run_p2p(model, clip, inversion, source_text, edit_text, p2p, w_source, w_edit,
                                     perceptual=perceptual, mask_use=perceptual_mask or MaskUse.ATTENTION_MASK,
                                     painted_mask=mask)
        mask_image = torch.nn.functional.interpolate(mask[:, None].float(), scale_factor=LATENT_TO_PIXELS,
                                                     mode="nearest")[:, 0]
        return io.NodeOutput({"samples": edit}, mask_image, {"samples": source})


NODES = [PSGTextEncode, PSGPromptToPrompt, PSGP2PSampler]
