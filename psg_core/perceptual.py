"""Perceptual similarity guidance: at each guided sampling step, decode the Tweedie estimate
x0_hat, measure its distance to the real image (LPIPS by default) and move the latent down the
gradient, so the edit keeps what the prompt does not ask to change.

Plugs into ``ddim_sample(..., perceptual=PerceptualGuidance(...))`` (the sampler's perceptual
seam). Step rule, with v = x0_hat (MPGD, default) or v = x_t (DPS, ``through_model=True``):

    d = scale * (every / n) * rms(x0_hat) * g / rms(g),   g = dL/dv,   per sample

MPGD moves x0_hat by -d (x_next by -a(s') d); DPS moves x_next by -d in full, as in DPS
(x_next = DDIM(x_t, x0_hat) - d). A step whose correction is exactly zero is not counted (NaN loss).
i.e. a normalised-gradient step whose length is a fixed fraction of the latent's own size,
spread evenly over the schedule: ``scale`` is the total budget, in RMS units of x0_hat, that the
guidance may move the estimate over a full run (if every step pushed the same way). It does not
depend on the loss's magnitude, the latent scale, the resolution or the step count, so scale 1
means the same for SD1.5 at 512 px in 50 steps as for SDXL at 1024 px in 30. See docs/method.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lpips
import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .losses import ImageLoss, Metric, as_mask
from .spaces import NoiseSpace, batch_view, coefficients

logger = logging.getLogger(__name__)

Decode = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_SCALE = 1.0


def window_problem(start: float, end: float, every: int, repeats: int = 1) -> str | None:
    """What is wrong with a guidance window (``start``/``end`` fractions of the run, every n-th step,
    ``repeats`` per step), or None; callers prefix it with who asked."""
    if not 0.0 <= start <= end <= 1.0:
        return f"need 0 <= start <= end <= 1 (got start {start}, end {end})"
    if every < 1:
        return f"'every' must be at least 1 (got {every})"
    if repeats < 1:
        return f"'repeats' must be at least 1 (got {repeats})"
    return None


class PerceptualGuidance:
    """The ``perceptual`` hook of ``ddim_sample``; ``.losses`` holds one loss per sampling step
    (NaN where the step was not guided) and is reset when a run starts (step 0).

    decode: latent x0 -> image in [0, 1], (B, 3, H, W), differentiable.
    reference: (1 or B, 3, H, W) in [0, 1], resized to the decoded size if needed.
    loss: None (LPIPS-alex via ``load_lpips``), an ``lpips.LPIPS``, an ``ImageLoss``, or any
        ``loss(image, reference) -> scalar``. ``mask`` (1 = edited, free), ``mse_weight`` and
        ``loss_scale`` configure the loss unless an ``ImageLoss`` is given.
    start, end: guided fraction of the schedule (0 = first, noisiest step); ``every`` k-th step,
        ``repeats`` gradient steps each. through_model: DPS (backward through the denoiser via
        ``predict``) instead of MPGD (gradient w.r.t. x0_hat only; the denoiser is never
        differentiated). checkpoint: recompute ``decode`` in the backward to save memory.
    """

    def __init__(self, decode: Decode, reference: torch.Tensor, *,
                 loss: lpips.LPIPS | ImageLoss | Metric | None = None, scale: float = DEFAULT_SCALE,
                 start: float = 0.0, end: float = 1.0, every: int = 1, repeats: int = 1,
                 through_model: bool = False, mask: torch.Tensor | None = None, mse_weight: float = 0.0,
                 loss_scale: float = 1.0, checkpoint: bool = False) -> None:
        if not callable(decode):
            raise ValueError("PerceptualGuidance: decode must be a callable latent -> image in [0, 1].")
        if reference.dim() != 4 or reference.shape[1] != 3:
            raise ValueError("PerceptualGuidance: reference must be (B, 3, H, W); got "
                             f"{tuple(reference.shape)}.")
        if reference.numel() and (reference.min() < -1e-3 or reference.max() > 1 + 1e-3):
            raise ValueError("PerceptualGuidance: reference must be an image in [0, 1] (not [-1, 1] or "
                             "0-255).")
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"PerceptualGuidance: scale must be a finite number >= 0 (got {scale}).")
        problem = window_problem(start, end, every, repeats)
        if problem:
            raise ValueError(f"PerceptualGuidance: {problem}.")
        self.decode = decode
        self.reference = reference
        self.loss = _make_loss(loss, mask, mse_weight, loss_scale)
        self.scale, self.start, self.end = float(scale), float(start), float(end)
        self.every, self.repeats = int(every), int(repeats)
        self.through_model = bool(through_model)
        self.checkpoint = bool(checkpoint)
        self.losses: list[float] = []
        self._ref: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the recorded losses (done automatically at step 0)."""
        self.losses = []

    def is_guided(self, step: int, total: int) -> bool:
        """Whether sampling step ``step`` of ``total`` (0 = noisiest) takes a perceptual step."""
        if self.scale == 0 or total < 1:
            return False
        first = math.ceil(self.start * total - 1e-9)
        return first <= step and step / total < self.end and (step - first) % self.every == 0

    def step_size(self, total: int) -> float:
        """Per guided step move, as a fraction of rms(x0_hat): the budget spread over the run."""
        return self.scale * self.every / total

    def __call__(self, *, step: int, total: int, x: torch.Tensor, sigma: torch.Tensor,
                 sigma_next: torch.Tensor, x0_hat: torch.Tensor, eps_hat: torch.Tensor,
                 predict: Callable[[torch.Tensor], torch.Tensor],
                 space: NoiseSpace) -> tuple[torch.Tensor, torch.Tensor]:
        if step == 0:
            self.reset()
        if not self.is_guided(step, total):
            self.losses.append(float("nan"))
            return x0_hat, eps_hat
        size = self.step_size(total)
        with torch.inference_mode(False), torch.enable_grad():
            if self.through_model:
                new_x0, new_eps, first_loss = self._dps(x, sigma_next, x0_hat, eps_hat, predict, space, size)
            else:
                new_x0, first_loss = self._mpgd(x0_hat, size)
                new_eps = eps_hat
        new_x0, new_eps = new_x0.to(x0_hat.dtype), new_eps.to(eps_hat.dtype)
        if torch.equal(new_x0, x0_hat) and torch.equal(new_eps, eps_hat):
            # a zero gradient (e.g. everything masked): the step changed nothing, so it does not count
            self.losses.append(float("nan"))
            return x0_hat, eps_hat
        self.losses.append(first_loss)
        logger.debug("perceptual step %d/%d: loss %.5f", step, total, first_loss)
        return new_x0, new_eps

    def _mpgd(self, x0_hat: torch.Tensor, size: float) -> tuple[torch.Tensor, float]:
        """Gradient w.r.t. x0_hat only: the denoiser is not differentiated (Manifold-preserving GD)."""
        x0 = _for_grad(x0_hat)
        unit = _rms(x0)
        first = float("nan")
        for r in range(self.repeats):
            v = x0.requires_grad_(True)
            value, grad = self._loss_and_grad(v, v)
            first = value if r == 0 else first
            x0 = (v - size * unit * grad / _rms(grad).clamp_min(1e-12)).detach()
        return x0, first

    def _dps(self, x: torch.Tensor, sigma_next: torch.Tensor, x0_hat: torch.Tensor, eps_hat: torch.Tensor,
             predict: Callable[[torch.Tensor], torch.Tensor], space: NoiseSpace,
             size: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Gradient w.r.t. x_t through the denoiser (DPS). As in DPS, the correction -d found at x_t
        is applied to x_next in full: x_next = DDIM(x_t) - d. The hook expresses it as
        x0_hat' = x0_hat - d / a(s'), eps_hat held (a(s') > 0 on every sampling step)."""
        start = _for_grad(x)
        xt = start
        first = float("nan")
        for r in range(self.repeats):
            v = xt.requires_grad_(True)
            x0_pred = predict(v).to(v.dtype)
            value, grad = self._loss_and_grad(x0_pred, v)
            first = value if r == 0 else first
            xt = (v - size * _rms(x0_pred.detach()) * grad / _rms(grad).clamp_min(1e-12)).detach()
        correction = start - xt
        a_next, _ = coefficients(space, sigma_next.detach().clone().to(correction.dtype))
        new_x0 = x0_hat.to(correction.dtype) - correction / batch_view(a_next, correction)
        return new_x0, eps_hat, first

    def _loss_and_grad(self, x0: torch.Tensor, wrt: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One decode + loss + backward; only ``wrt``'s gradient is kept, the graph is freed."""
        image = grad_checkpoint(self.decode, x0, use_reentrant=False) if self.checkpoint else self.decode(x0)
        value = self.loss(image, self._reference_like(image))
        if not torch.is_tensor(value) or value.numel() != 1:
            raise ValueError("PerceptualGuidance: the loss must return a scalar tensor (reduce over the "
                             "batch).")
        (grad,) = torch.autograd.grad(value, wrt)
        return float(value.detach()), grad

    def _reference_like(self, image: torch.Tensor) -> torch.Tensor:
        """The reference as a normal (non-inference) tensor on the image's device, dtype and size."""
        ref = self._ref
        if (ref is None or ref.device != image.device or ref.dtype != image.dtype
                or ref.shape[-2:] != image.shape[-2:]):
            ref = self.reference.detach().clone().to(image.device, image.dtype)
            if ref.shape[-2:] != image.shape[-2:]:
                logger.info("perceptual guidance: resizing the reference %s to the decoded size %s",
                            tuple(ref.shape[-2:]), tuple(image.shape[-2:]))
                ref = torch.nn.functional.interpolate(ref, size=image.shape[-2:], mode="bilinear",
                                                      align_corners=False, antialias=True)
            self._ref = ref
        if ref.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"PerceptualGuidance: reference batch {ref.shape[0]} does not match the latent "
                             f"batch {image.shape[0]} (use 1 or the same).")
        return ref


def _make_loss(loss: lpips.LPIPS | ImageLoss | Metric | None, mask: torch.Tensor | None, mse_weight: float,
               loss_scale: float) -> ImageLoss:
    if isinstance(loss, ImageLoss):
        if mask is not None or mse_weight or loss_scale != 1.0:
            raise ValueError("PerceptualGuidance: set mask/mse_weight/loss_scale on the ImageLoss, not both.")
        return loss
    if loss is None:
        from .lpips_weights import load_lpips

        loss = load_lpips("alex")
    elif not callable(loss):
        raise ValueError("PerceptualGuidance: loss must be an lpips.LPIPS or a callable, got "
                         f"{type(loss).__name__}.")
    if isinstance(loss, torch.nn.Module):
        loss.eval().requires_grad_(False)
    return ImageLoss(loss, mask=None if mask is None else as_mask(mask), mse_weight=mse_weight,
                     loss_scale=loss_scale)


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square, shaped (B, 1, 1, 1) to broadcast."""
    return t.pow(2).flatten(1).mean(1).sqrt().view(-1, *([1] * (t.dim() - 1)))


def _for_grad(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) copy to differentiate; half precision is promoted to float32."""
    t = t.detach().clone()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
