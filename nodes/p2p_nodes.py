"""PSG P2P Sampler: prompt-to-prompt editing of a real photo (two branches, attention control)."""

from __future__ import annotations

from comfy_api.latest import io

from ..psg_core.perceptual import DEFAULT_SCALE
from . import validation
from .pipelines.attention_patches import P2PSettings
from .pipelines.p2p import NODE, SETTINGS_NODE, MaskUse, image_sized, make_perceptual, run_p2p
from .psg_types import PSGInversionType, PSGLpipsType, PSGP2PType
from .tooltips import GUIDANCE_VAE_TOOLTIP

WEIGHT = {"min": -30.0, "max": 30.0, "step": 0.1, "round": 0.01}


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
                "inversion (its per-step nulls, the source prompt as null, or the direct-inversion offsets) "
                "while the edit branch, in the same model call, follows the edit prompt with the "
                "triple-prompt guidance and the source branch's attention. SD1.x, SD2.x and SDXL. Optional "
                "LPIPS guidance pulls the region outside the attention mask back to the photo."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the inversion was made with "
                                                "(SD1.x, SD2.x, SDXL)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the prompts and gives their tokens "
                                              "for the attention alignment."),
                PSGInversionType.Input("inversion", tooltip="From PSG Text Guidance Optimization (or PSG "
                                                            "DDIM Inversion): the source branch retraces "
                                                            "it."),
                io.String.Input("source_text", force_input=True,
                                tooltip="The caption of the photo (the source prompt the inversion used), "
                                        "from PSG Text Encode's text output."),
                io.String.Input("edit_text", force_input=True,
                                tooltip="The edited caption (for replace: the source with words swapped), "
                                        "from PSG Text Encode's text output."),
                PSGP2PType.Input("p2p", tooltip="Attention-control settings from PSG Prompt-to-Prompt."),
                io.Float.Input("w_source", default=0.0, **WEIGHT,
                               tooltip="Edit branch: weight of (source - null). 0 = plain CFG on the edit "
                                       "prompt."),
                io.Float.Input("w_edit", default=7.5, **WEIGHT,
                               tooltip="Edit branch: weight of (edit - null), the CFG scale. Must not be 0."),
                io.Vae.Input("vae", optional=True, tooltip="Optional, for perceptual guidance: the model's "
                                                           "VAE (or connect guidance_vae too)."),
                io.Image.Input("reference", optional=True, tooltip="Optional, for perceptual guidance: the "
                                                                   "photo the edit should stay close to."),
                PSGLpipsType.Input("lpips", optional=True,
                                   tooltip="Optional, for perceptual guidance: from PSG LPIPS Loader."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001,
                               optional=True,
                               tooltip="Perceptual guidance strength on the edit branch (used when vae, "
                                       "reference and lpips are connected); 0 turns it off."),
                io.Combo.Input("perceptual_mask", options=[m.value for m in MaskUse],
                               default=MaskUse.ATTENTION_MASK.value, optional=True,
                               tooltip="attention mask: LPIPS pulls only outside the blend words' region and "
                                       "the painted mask; painted mask: only outside the painted mask; whole "
                                       "image: everywhere."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional painted mask (1 = free to change), e.g. from the mask editor "
                                      "via PSG Fit Image: widens the region the perceptual guidance leaves "
                                      "free."),
                io.Vae.Input("guidance_vae", optional=True, tooltip=GUIDANCE_VAE_TOOLTIP),
            ],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The edited latent (decode with VAE Decode)."),
                io.Mask.Output(display_name="mask",
                               tooltip="The edited region found from the blend words' attention (1 = "
                                       "edited), image-sized; preview or edit it and reuse it as a MASK. "
                                       "Zeros without blend words."),
                io.Latent.Output(display_name="source_latent",
                                 tooltip="The source branch's result: the reconstruction of the photo."),
            ],
        )

    @classmethod
    def validate_inputs(cls, w_source: float | None = None, w_edit: float | None = None,
                        scale: float | None = None) -> bool | str:
        return validation.check_number_inputs(cls, locals())  # NaN / inf / range, before anything runs

    @classmethod
    def execute(cls, model, clip, inversion, source_text, edit_text, p2p, w_source, w_edit, vae=None,
                reference=None, lpips=None, scale=DEFAULT_SCALE, perceptual_mask=MaskUse.ATTENTION_MASK.value,
                mask=None, guidance_vae=None) -> io.NodeOutput:
        if not isinstance(p2p, P2PSettings):
            raise ValueError(f"{NODE}: the 'p2p' input must come from the {SETTINGS_NODE} node.")
        perceptual = make_perceptual(model, vae, reference, lpips, scale, guidance_vae, inversion)
        edit, source, edited = run_p2p(model, clip, inversion, source_text, edit_text, p2p, w_source, w_edit,
                                       perceptual=perceptual,
                                       mask_use=perceptual_mask or MaskUse.ATTENTION_MASK, painted_mask=mask)
        return io.NodeOutput({"samples": edit}, image_sized(edited), {"samples": source})
