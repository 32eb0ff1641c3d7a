"""Perceptual guidance on the host: the LPIPS step's decoder / reference / mask on the host device
(``psg_core.PerceptualGuidance``), and the KSAMPLER that runs ``psg_core.ddim_sample`` with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import comfy.samplers
import torch

from ...psg_core.perceptual import PerceptualGuidance, window_problem
from .. import host, validation
from ..psg_types import PSGInversion, check_matches
from .guider import PSGTripleGuider
from .lpips import LpipsHandle

logger = logging.getLogger(__name__)


class GradientPath(str, Enum):
    """Which gradient the perceptual step follows."""

    X0 = "x0 (fast)"  # w.r.t. the x0 estimate only: no UNet backward
    THROUGH_MODEL = "through model (DPS)"  # w.r.t. the noisy latent, through the UNet

GUIDANCE_RESOLUTIONS: dict[str, int] = {"full": 1, "1/2": 2, "1/4": 4}
"""``guidance_resolution`` option -> latent downscale factor for the perceptual decode + LPIPS."""
CHECKPOINT_ABOVE_PIXELS = 512 * 512
"""Guidance images larger than this decode through a block-checkpointed full VAE decoder: its
backward activations grow with the pixels (GBs at SDXL's 1024 px), one extra forward is cheaper."""
MIN_GUIDANCE_SIDE = 32
"""Smallest guidance image side (px) LPIPS' backbones can take (AlexNet's pooling needs ~32)."""
NO_GUIDANCE_VAE_HINT = (
    "%s: no guidance_vae: decoding x0 through the full VAE for the LPIPS gradient; a TAESD guidance VAE "
    "(VAELoader -> taesd / taesdxl / taesd3 / taef1) makes a guided step about 1.1x a plain step instead of "
    "about 2-3x"
)


@dataclass(frozen=True)
class PerceptualSettings:
    """The perceptual-guidance knobs, shared by the sampler and the one-node edit."""

    scale: float
    start: float
    end: float
    every: int
    through_model: bool
    resolution: str = "full"

    def validate(self, node: str) -> None:
        if self.resolution not in GUIDANCE_RESOLUTIONS:
            raise ValueError(f"{node}: guidance_resolution must be one of {', '.join(GUIDANCE_RESOLUTIONS)} "
                             f"(got {self.resolution!r}).")
        problem = window_problem(self.start, self.end, self.every)
        if problem:
            raise ValueError(f"{node}: {problem}.")


def build_perceptual(
    vae: Any,
    reference: torch.Tensor,
    lpips: LpipsHandle,
    settings: PerceptualSettings,
    mask: torch.Tensor | None,
    process_latent_out: Any,
    latent_hw: tuple[int, int],
    node: str,
    guidance_vae: Any = None,
) -> Any:
    """A ``psg_core.PerceptualGuidance`` whose decode/LPIPS run on the host device in a
    gradient-safe dtype, through ``guidance_vae`` when given (else ``vae``), at the settings'
    guidance resolution; the mask is resized to the decoded size (the core resizes the reference)."""

    if not isinstance(lpips, LpipsHandle):
        raise ValueError(f"{node}: the 'lpips' input must come from the PSG LPIPS Loader node.")
    decoder_vae = vae if guidance_vae is None else guidance_vae
    factor = GUIDANCE_RESOLUTIONS[settings.resolution]
    ratio = _spatial_ratio(decoder_vae)
    reduced = host.reduced_size(latent_hw[0], latent_hw[1], factor)
    size = (reduced[0] * ratio, reduced[1] * ratio)
    if factor == 1:
        validation.check_min_side(size[1], size[0], node, "the photo (guidance image)")
    if factor > 1 and min(size) < MIN_GUIDANCE_SIDE:
        fits = [name for name, f in GUIDANCE_RESOLUTIONS.items()
                if f == 1
                or min(host.reduced_size(latent_hw[0], latent_hw[1], f)) * ratio >= MIN_GUIDANCE_SIDE]
        raise ValueError(
            f"{node}: guidance_resolution {settings.resolution} makes the guidance image "
            f"{size[1]}x{size[0]} px; "
            f"LPIPS needs at least {MIN_GUIDANCE_SIDE} px per side. Use {' or '.join(repr(f) for f in fits)} "
            "for an image this small."
        )
    if guidance_vae is None and not validation.is_taesd(vae):
        logger.info(NO_GUIDANCE_VAE_HINT, node)
    decode = host.DifferentiableDecoder(decoder_vae, process_latent_out, node, downscale=factor,
                                        name="vae" if guidance_vae is None else "guidance_vae",
                                        checkpoint=size[0] * size[1] > CHECKPOINT_ABOVE_PIXELS)
    logger.debug("%s: perceptual guidance decodes through %s at %dx%d px", node, decode.kind, size[1],
                 size[0])
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


@dataclass(eq=False)
class PerceptualSampling:
    """The KSAMPLER function: ``psg_core.ddim_sample`` over the GUIDER's combined x0.

    It starts from the connected latent itself when noise is disabled (right for every family: a
    stock sampler would start a flow model at (1 - sigma) * latent), and adds a PSG guider's
    direct-inversion offsets to the latent after each step as the core does, so the perceptual
    step decodes the true Tweedie estimate."""

    starts_from_latent = True  # read by the PSG guider: this sampler needs no noise_scaling'd start

    vae: Any
    reference: torch.Tensor
    lpips: Any
    settings: PerceptualSettings
    mask: torch.Tensor | None
    inversion: PSGInversion | None
    guidance_vae: Any
    node: str
    losses: list[float] = field(default_factory=list)

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        from ...psg_core.ddim import ddim_sample


        extra_args = extra_args or {}
        guider = model.inner_model
        base = guider.inner_model
        family = host.detect_family(guider.model_patcher, self.node)
        validation.check_guidance_vae(self.guidance_vae, guider.model_patcher, self.node)
        offsets_from = guider.inversion if isinstance(guider, PSGTripleGuider) and guider.offsets else None
        with host.grad_context(), host.frozen(base):
            x = host.normal_tensor(x)
            sigmas = host.normal_tensor(sigmas).float()
            if self.inversion is not None:
                x = self._start_from_inversion(family, x, sigmas)
            elif _noise_disabled(model):
                x = host.normal_tensor(model.latent_image).to(x.dtype)
            offsets = None
            if offsets_from is not None:
                self._check_schedule(offsets_from, sigmas)
                offsets = [o.to(x.device, x.dtype) for o in offsets_from.offsets]
            perceptual = None
            if self.settings.scale > 0:
                perceptual = build_perceptual(self.vae, self.reference, self.lpips, self.settings, self.mask,
                                              base.process_latent_out, tuple(x.shape[-2:]), self.node,
                                              self.guidance_vae)
            if perceptual is not None and self.settings.through_model:
                host.make_grad_safe(base.diffusion_model)

            def denoise(xx, sigma, conds):
                return [model(xx, sigma.reshape(-1).expand(xx.shape[0]), **extra_args) for _ in conds]

            if offsets is not None:
                guider.fold_offsets = False  # added to the latent below instead
            try:
                report = host.k_callback_reporter(callback, len(sigmas) - 1)
                out = ddim_sample(denoise, x, sigmas, None, space=family.space, offsets=offsets,
                                  perceptual=perceptual, callback=report)
            finally:
                if offsets is not None:
                    guider.fold_offsets = True
            # the core records NaN for unguided steps; keep the guided ones
            self.losses = [float(v) for v in perceptual.losses if v == v] if perceptual is not None else []
        return out.detach()

    def _check_schedule(self, inv: PSGInversion, sigmas: torch.Tensor) -> None:
        expected = inv.sigmas.flip(0).to(sigmas)
        if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-3, atol=1e-5):
            raise ValueError(
                f"{self.node}: the SIGMAS differ from the inversion's schedule "
                f"({inv.steps} steps, {inv.scheduler}); "
                "use BasicScheduler with the same scheduler and steps and denoise 1.0."
            )

    def _start_from_inversion(self, family: host.ModelFamily, x: torch.Tensor,
                              sigmas: torch.Tensor) -> torch.Tensor:
        """Start exactly at the inverted noise; the schedule must be the inversion's."""
        inv = self.inversion
        check_matches(inv, family.name, self.node, latent_shape=tuple(x.shape))
        self._check_schedule(inv, sigmas)
        return inv.noise.to(x.device, x.dtype)


def _noise_disabled(model: Any) -> bool:
    """Whether SamplerCustomAdvanced was given zero noise (Disable Noise): then the connected latent
    (``KSamplerX0Inpaint.latent_image``, model space) is the start itself."""
    noise, latent = getattr(model, "noise", None), getattr(model, "latent_image", None)
    return torch.is_tensor(noise) and torch.is_tensor(latent) and not bool(torch.any(noise))


def make_sampler(vae, reference, lpips, settings: PerceptualSettings, mask=None, inversion=None,
                 guidance_vae=None, *, node: str) -> Any:
    """The KSAMPLER; ``node`` names the node in its error messages."""
    settings.validate(node)
    fn = PerceptualSampling(vae, reference, lpips, settings, mask, inversion, guidance_vae, node)
    return comfy.samplers.KSAMPLER(fn)

