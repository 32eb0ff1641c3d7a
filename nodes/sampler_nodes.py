"""Perceptual-guidance SAMPLER (issue 5, Deliver 5): DDIM with an LPIPS step on the Tweedie x0."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from ..psg_core.perceptual import DEFAULT_SCALE, PerceptualGuidance
from . import host, validation
from .lpips_nodes import LpipsHandle
from .psg_types import PSGInversion, PSGInversionType, PSGLpipsType, check_matches

logger = logging.getLogger(__name__)

NODE = "PSG Perceptual Sampler"
GRADIENT_PATHS = ("x0 (fast)", "through model (DPS)")


@dataclass(frozen=True)
class PerceptualSettings:
    """The perceptual-guidance knobs, shared by the sampler and the one-node edit."""

    scale: float
    start: float
    end: float
    every: int
    through_model: bool

    def validate(self, node: str) -> None:
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"{node}: need 0 <= start <= end <= 1 (got start {self.start}, end {self.end}).")
        if self.every < 1:
            raise ValueError(f"{node}: 'every' must be at least 1 (got {self.every}).")


def build_perceptual(
    vae: Any,
    reference: torch.Tensor,
    lpips: LpipsHandle,
    settings: PerceptualSettings,
    mask: torch.Tensor | None,
    process_latent_out: Any,
    latent_hw: tuple[int, int],
    node: str,
) -> Any:
    """A ``psg_core.PerceptualGuidance`` whose decode/LPIPS run on the host device in a
    gradient-safe dtype; the mask is resized to the decoded size."""

    if not isinstance(lpips, LpipsHandle):
        raise ValueError(f"{node}: the 'lpips' input must come from the PSG LPIPS Loader node.")
    decode = host.DifferentiableDecoder(vae, process_latent_out, node)
    ratio = _spatial_ratio(vae)
    size = (latent_hw[0] * ratio, latent_hw[1] * ratio)
    ref = host.image_to_bchw(reference, node, "reference").to(decode.device)  # the core resizes it if needed
    mask_t = host.mask_to_b1hw(mask, *size)
    if mask_t is not None:
        mask_t = mask_t.to(decode.device)
    return PerceptualGuidance(
        decode,
        ref,
        loss=lpips.on(decode.device),
        scale=settings.scale,
        start=settings.start,
        end=settings.end,
        every=settings.every,
        through_model=settings.through_model,
        mask=mask_t,
    )


def _spatial_ratio(vae: Any) -> int:
    fn = getattr(vae, "spacial_compression_decode", None)
    ratio = fn() if callable(fn) else getattr(vae, "downscale_ratio", 8)
    return int(ratio) if isinstance(ratio, (int, float)) else 8


class _PerceptualSampling:
    """The KSAMPLER function: ``psg_core.ddim_sample`` over the GUIDER's combined x0."""

    def __init__(self, vae, reference, lpips, settings: PerceptualSettings, mask, inversion: PSGInversion | None):
        self.vae = vae
        self.reference = reference
        self.lpips = lpips
        self.settings = settings
        self.mask = mask
        self.inversion = inversion
        self.losses: list[float] = []

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        from ..psg_core.ddim import ddim_sample

        extra_args = extra_args or {}
        guider = model.inner_model
        base = guider.inner_model
        family = host.detect_family(guider.model_patcher, NODE)
        with host.grad_context(), host.frozen(base):
            x = host.normal_tensor(x)
            sigmas = host.normal_tensor(sigmas).float()
            if self.inversion is not None:
                x = self._start_from_inversion(family, x, sigmas)
            perceptual = None
            if self.settings.scale > 0:
                perceptual = build_perceptual(self.vae, self.reference, self.lpips, self.settings, self.mask,
                                              base.process_latent_out, tuple(x.shape[-2:]), NODE)
            if perceptual is not None and self.settings.through_model:
                host.make_grad_safe(base.diffusion_model)

            def denoise(xx, sigma, conds):
                return [model(xx, sigma.reshape(-1).expand(xx.shape[0]), **extra_args) for _ in conds]

            out = ddim_sample(denoise, x, sigmas, None, space=family.space, perceptual=perceptual,
                              callback=host.k_callback_reporter(callback, len(sigmas) - 1))
            # the core records NaN for unguided steps; keep the guided ones
            self.losses = [float(v) for v in perceptual.losses if v == v] if perceptual is not None else []
        return out.detach()

    def _start_from_inversion(self, family: host.ModelFamily, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Flow models scale the incoming latent by (1 - sigma) (noise_scaling), so the inverted
        noise must come from the inversion itself; the schedule must be the inversion's."""
        inv = self.inversion
        check_matches(inv, family.name, NODE, latent_shape=tuple(x.shape))
        expected = inv.sigmas.flip(0).to(sigmas)
        if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-3, atol=1e-5):
            raise ValueError(
                f"{NODE}: the SIGMAS differ from the inversion's schedule ({inv.steps} steps, {inv.scheduler}); "
                "use BasicScheduler with the same scheduler and steps and denoise 1.0."
            )
        return inv.noise.to(x.device, x.dtype)


def make_sampler(vae, reference, lpips, settings: PerceptualSettings, mask=None, inversion=None) -> Any:
    settings.validate(NODE)
    fn = _PerceptualSampling(vae, reference, lpips, settings, mask, inversion)
    return comfy.samplers.KSAMPLER(fn)


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
                "photo's look. Use with SamplerCustomAdvanced, Disable Noise and the inverted noise latent."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE that decodes x0 estimates for the LPIPS loss (the one that encoded the image)."),
                io.Image.Input("reference", tooltip="The real image the edit should stay perceptually close to (usually the input photo)."),
                PSGLpipsType.Input("lpips", tooltip="The LPIPS network, from PSG LPIPS Loader."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001, tooltip="Strength of the perceptual step (normalised across models and sizes). 0 disables it; 0.5-2 typical; higher keeps more of the photo but weakens the edit."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the run where guidance starts (0 = first, noisiest step)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the run where guidance stops (1 = last step). Stopping at 0.6-0.8 leaves fine detail to the edit."),
                io.Int.Input("every", default=1, min=1, max=100, tooltip="Guide every n-th step only (1 = all); 2-3 halves the cost."),
                io.Combo.Input("gradient", options=list(GRADIENT_PATHS), default=GRADIENT_PATHS[0], tooltip="x0 (fast): gradient w.r.t. the x0 estimate only, no UNet backward. through model (DPS): w.r.t. the noisy latent through the UNet, slower and heavier."),
                io.Mask.Input("mask", optional=True, tooltip="Optional: 1 = region to edit freely, 0 = region kept close to the reference."),
                PSGInversionType.Input("inversion", optional=True, tooltip="Optional: start from this inversion's noise (required for flow models: SD3/Flux). The SIGMAS must match its schedule."),
            ],
            outputs=[io.Sampler.Output(tooltip="A SAMPLER for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, vae, reference, lpips, scale, start, end, every, gradient, mask=None, inversion=None) -> io.NodeOutput:
        settings = PerceptualSettings(scale=scale, start=start, end=end, every=every,
                                      through_model=gradient == GRADIENT_PATHS[1])
        validation.check_mask_batch(mask, reference.shape[0], NODE)
        return io.NodeOutput(make_sampler(vae, reference, lpips, settings, mask, inversion))
