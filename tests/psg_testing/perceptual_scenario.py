"""A real-image edit with exact ground truth, for perceptual-guidance tests and the method table.

The analytic mixture plays the diffusion model: the "photo" is a sample of component 0 (the
source prompt), the edit prompt favours component 1. A fixed differentiable decoder (seeded
1x1 conv 4->3, bilinear upsampling, sigmoid) plays the VAE. The photo is DDIM-inverted under the
source prompt and sampled back under the edit guidance, with or without perceptual guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.perceptual import PerceptualGuidance
from psg_core.spaces import NoiseSpace
from psg_testing.analytic import AnalyticMixture

F64 = torch.float64
SOURCE, EDIT = 0, 1


class CountBackward(torch.autograd.Function):
    """Identity whose backward counts how often autograd went through it."""

    count = 0

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        CountBackward.count += 1
        return grad


def instrumented(model: AnalyticMixture) -> Callable[[Tensor, Tensor, list], list[Tensor]]:
    """The denoiser with its input routed through ``CountBackward``."""
    return lambda x, sigma, conds: model(CountBackward.apply(x), sigma, conds)


def make_decoder(seed: int = 0, factor: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(4, 3, 1)
    torch.nn.init.normal_(conv.weight, std=1.0)
    return torch.nn.Sequential(conv, torch.nn.Upsample(scale_factor=factor, mode="bilinear"),
                               torch.nn.Sigmoid()).requires_grad_(False)


@dataclass
class EditScene:
    model: AnalyticMixture
    decoder: torch.nn.Module
    guidance: TextGuidance
    photo: Tensor  # clean latent x0 of the real image
    reference: Tensor  # decoded photo, [0, 1]
    noise: Tensor  # the photo inverted under the source prompt
    sigmas: Tensor  # descending, ending at 0

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z.float())

    def sample(self, perceptual: PerceptualGuidance | None = None, denoise=None) -> Tensor:
        return ddim_sample(denoise or self.model, self.noise, self.sigmas, self.guidance,
                           perceptual=perceptual)

    def guide(self, loss, **kwargs) -> PerceptualGuidance:
        return PerceptualGuidance(self.decode, self.reference, loss=loss, **kwargs)

    def distance(self, latent: Tensor, loss) -> float:
        """The guidance's own loss between the decoded result and the reference."""
        with torch.no_grad():
            return float(loss(self.decode(latent), self.reference))

    def edit_retained(self, latent: Tensor) -> float:
        """How much of the edit survives: the result's move from the photo along mu_edit - mu_source,
        as a fraction of that difference (about 1 unguided, 0 if guidance undid the edit)."""
        d = self.model.means[EDIT] - self.model.means[SOURCE]
        return float(((latent[0] - self.photo[0]) * d).sum() / (d * d).sum())

    def region_error(self, latent: Tensor, columns: slice) -> float:
        """RMS distance to the photo over some latent columns."""
        return float((latent - self.photo)[..., columns].pow(2).mean().sqrt())

    def edit_weight(self, latent: Tensor) -> float:
        """Posterior probability that the result belongs to the edit component (prior-free, low noise)."""
        sigma = torch.tensor([0.05], dtype=F64)
        return float(self.model.posterior_weights(latent, sigma, None)[0, EDIT])


def build_scene(steps: int = 50, seed: int = 0, w_edit: float = 2.0) -> EditScene:
    model = AnalyticMixture.random(k=3, shape=(4, 8, 8), dim=8, std=0.5, seed=seed)
    source, edit = model.component_embedding(SOURCE), model.component_embedding(EDIT)
    null = torch.zeros(1, model.dim, dtype=F64)
    photo = model.sample(1, source, torch.Generator().manual_seed(seed + 10))
    levels = torch.exp(torch.linspace(math.log(0.03), math.log(14.6), steps, dtype=F64))
    up = torch.cat([torch.zeros(1, dtype=F64), levels])
    noise = ddim_invert(model, photo, up, source, space=NoiseSpace.VE).noise
    decoder = make_decoder(seed)
    with torch.no_grad():
        reference = decoder(photo.float())
    guidance = TextGuidance(null, source, edit, w_source=0.0, w_edit=w_edit)
    return EditScene(model, decoder, guidance, photo, reference, noise, up.flip(0))
