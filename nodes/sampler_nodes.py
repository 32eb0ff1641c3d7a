"""Perceptual-guidance SAMPLER node: DDIM with an LPIPS step on the Tweedie x0 (``psg_core.ddim_sample``)."""

from __future__ import annotations

from comfy_api.latest import io

from ..psg_core.perceptual import DEFAULT_SCALE
from . import validation
from .pipelines.perceptual import GUIDANCE_RESOLUTIONS, GradientPath, PerceptualSettings, make_sampler
from .psg_types import PSGInversionType, PSGLpipsType
from .tooltips import GUIDANCE_RESOLUTION_TOOLTIP, GUIDANCE_VAE_TOOLTIP

NODE = "PSG Perceptual Sampler"


class PSGPerceptualSampler(io.ComfyNode):
    """SAMPLER node: deterministic DDIM plus the LPIPS perceptual-similarity step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGPerceptualSampler",
            display_name=NODE,
            category="PSG/sampling",
            description=(
                "DDIM (eta 0) that, at guided steps, decodes the Tweedie x0 estimate with the VAE, measures "
                "LPIPS to the reference image and steps the latent towards it, so the edit keeps the "
                "photo's look. Use with SamplerCustomAdvanced, Disable Noise and the inverted noise latent. "
                "A guidance_vae (Load VAE -> taesd) and/or guidance_resolution 1/2 make guided steps much "
                "cheaper; the output image is decoded downstream with the main VAE as usual."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="The model's VAE (the one that encoded the image); decodes x0 "
                                            "estimates for the LPIPS loss unless a guidance_vae is "
                                            "connected."),
                io.Image.Input("reference", tooltip="The real image the edit should stay perceptually close "
                                                    "to (usually the input photo)."),
                PSGLpipsType.Input("lpips", tooltip="The LPIPS network, from PSG LPIPS Loader."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001,
                               tooltip="Strength of the perceptual step (normalised across models and "
                                       "sizes). 0 disables it; 0.5-2 typical; higher keeps more of the photo "
                                       "but weakens the edit."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run where guidance starts (0 = first, noisiest "
                                       "step)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run where guidance stops (1 = last step). Stopping "
                                       "at 0.6-0.8 leaves fine detail to the edit."),
                io.Int.Input("every", default=1, min=1, max=100,
                             tooltip="Guide every n-th step only (1 = all); 2-3 halves the cost."),
                io.Combo.Input("gradient", options=[g.value for g in GradientPath],
                               default=GradientPath.X0.value,
                               tooltip="x0 (fast): gradient w.r.t. the x0 estimate only, no UNet backward. "
                                       "through model (DPS): w.r.t. the noisy latent through the UNet, "
                                       "slower and heavier."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: 1 = region to edit freely, 0 = region kept close to the "
                                      "reference."),
                PSGInversionType.Input("inversion", optional=True,
                                       tooltip="Optional: start from this inversion's noise (exactly, "
                                               "without a round trip through the LATENT). With Disable Noise "
                                               "the sampler otherwise starts from the connected latent "
                                               "itself, for every model family. The SIGMAS must match its "
                                               "schedule."),
                io.Vae.Input("guidance_vae", optional=True, tooltip=GUIDANCE_VAE_TOOLTIP),
                io.Combo.Input("guidance_resolution", options=list(GUIDANCE_RESOLUTIONS), default="full",
                               optional=True, tooltip=GUIDANCE_RESOLUTION_TOOLTIP),
            ],
            outputs=[io.Sampler.Output(tooltip="A SAMPLER for SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(
        cls,
        scale: float | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, vae, reference, lpips, scale, start, end, every, gradient, mask=None, inversion=None,
                guidance_vae=None, guidance_resolution="full") -> io.NodeOutput:
        settings = PerceptualSettings(scale=scale, start=start, end=end, every=every,
                                      through_model=gradient == GradientPath.THROUGH_MODEL,
                                      resolution=guidance_resolution or "full")
        validation.check_mask_batch(mask, reference.shape[0], NODE)
        return io.NodeOutput(make_sampler(vae, reference, lpips, settings, mask, inversion, guidance_vae,
                                          node=NODE))
