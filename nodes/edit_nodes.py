"""One-node edit: inversion -> text optimization -> the guider + sampler of the advanced graph -> decode."""

from __future__ import annotations

from comfy_api.latest import io

from ..psg_core.perceptual import DEFAULT_SCALE
from . import host, validation
from .pipelines.edit import NO_OPTIMIZATION
from .pipelines.edit import edit as run_edit
from .pipelines.perceptual import GUIDANCE_RESOLUTIONS, PerceptualSettings
from .psg_types import TEXT_MODE_NAMES, PSGLpipsType, TextMode
from .tooltips import GUIDANCE_RESOLUTION_TOOLTIP, GUIDANCE_VAE_TOOLTIP

NODE = "PSG Edit"


class PSGEdit(io.ComfyNode):
    """Everything in one box: the full PSG edit of a real image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGEdit",
            display_name=NODE,
            category="PSG",
            description=(
                "Edits a real photo with a text prompt: DDIM inversion under the source caption, "
                "text-guidance optimization, triple-prompt guidance (null / source / edit) and LPIPS "
                "perceptual-similarity guidance towards the photo. Same inputs, same output. A guidance_vae "
                "(Load VAE -> taesd) and/or guidance_resolution 1/2 make the perceptual steps much cheaper; "
                "the result is always decoded with the main vae."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x, SDXL, SD3 or Flux)."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the photo and decodes the result (and "
                                            "the x0 estimates for LPIPS unless a guidance_vae is "
                                            "connected)."),
                io.Image.Input("image", tooltip="The real photo to edit; sides a multiple of 8 (64 for best "
                                                "results)."),
                io.Conditioning.Input("null", tooltip="The null (empty) prompt."),
                io.Conditioning.Input("source", tooltip="A caption of the photo (source prompt)."),
                io.Conditioning.Input("edit", tooltip="The caption of the wanted result (edit prompt), e.g. "
                                                      "the source with one word changed."),
                PSGLpipsType.Input("lpips", tooltip="The LPIPS network, from PSG LPIPS Loader."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps for inversion and sampling; 50 as in the paper, 20-30 "
                                     "faster."),
                io.Combo.Input("scheduler", options=host.SCHEDULERS, default=host.DEFAULT_SCHEDULER,
                               tooltip="Sigma schedule for inversion and sampling; 'simple' matches DDIM."),
                io.Float.Input("w_source", default=0.0, min=-30.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Weight of (source - null). 0 = plain CFG on the edit prompt."),
                io.Float.Input("w_edit", default=7.5, min=-30.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Weight of (edit - null), the CFG scale; 0 reconstructs the photo. "
                                       "5-10 typical."),
                io.Combo.Input("text_optimization",
                               options=[*TEXT_MODE_NAMES, NO_OPTIMIZATION], default=TextMode.NULL_TEXT.value,
                               tooltip="How to keep the unedited content: 'null-text optimization' (best, "
                                       "slow), 'negative-prompt' (free), 'direct offsets' (fast), 'none'. "
                                       "Fitted at scale w_source + w_edit."),
                io.Int.Input("inner_steps", default=10, min=1, max=100,
                             tooltip="Null-text: the budget per step, as in prompt-to-prompt: 10 = at most "
                                     "12 model calls (the default schedule usually stops after 3-4)."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001,
                               tooltip="Perceptual (LPIPS) guidance strength; 0 turns it off. 0.5-2 typical; "
                                       "higher keeps more of the photo."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run where perceptual guidance starts."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run where perceptual guidance stops."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: 1 = region to edit freely, 0 = region kept close to the "
                                      "photo by LPIPS."),
                io.Vae.Input("guidance_vae", optional=True, tooltip=GUIDANCE_VAE_TOOLTIP),
                io.Combo.Input("guidance_resolution", options=list(GUIDANCE_RESOLUTIONS), default="full",
                               optional=True, tooltip=GUIDANCE_RESOLUTION_TOOLTIP),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The edited photo."),
                io.Latent.Output(display_name="latent", tooltip="The edited latent."),
                io.Float.Output(display_name="losses", is_output_list=True,
                                tooltip="The LPIPS loss at each guided step (a list), to plot or inspect."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls,
        w_source: float | None = None,
        w_edit: float | None = None,
        scale: float | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, vae, image, null, source, edit, lpips, steps, scheduler, w_source, w_edit,
                text_optimization, inner_steps, scale, start, end, mask=None, guidance_vae=None,
                guidance_resolution="full") -> io.NodeOutput:
        for name, cond in (("null", null), ("source", source), ("edit", edit)):
            host.embedding_of(cond, name, NODE)
        settings = PerceptualSettings(scale=scale, start=start, end=end, every=1, through_model=False,
                                      resolution=guidance_resolution or "full")
        settings.validate(NODE)
        validation.check_guidance_vae(guidance_vae, model, NODE)  # before the slow inversion
        validation.check_mask_batch(mask, image.shape[0], NODE)
        decoded, latent, losses = run_edit(
            model, vae, image, null, source, edit, lpips, steps=steps, scheduler=scheduler, w_source=w_source,
            w_edit=w_edit, text_mode=text_optimization, inner_steps=inner_steps, settings=settings,
            mask=mask, guidance_vae=guidance_vae, node=NODE,
            node_id=cls.hidden.unique_id if cls.hidden is not None else None)
        return io.NodeOutput(decoded, {"samples": latent}, losses or [0.0])
