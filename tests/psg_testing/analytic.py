"""An exact denoiser for testing the math: data is a Gaussian mixture, so E[x0 | x_sigma] is closed form.

x0 ~ sum_k pi_k(e) N(mu_k, s^2 I), with mixture logits prior + W @ e for a conditioning embedding e
(a learnable null embedding therefore changes predictions differentiably). For x = a x0 + b eps::

    x | k ~ N(a mu_k, v I),  v = a^2 s^2 + b^2
    w_k   = softmax_k(logit_k + log N(x; a mu_k, v I))
    E[x0 | x, k] = mu_k + (a s^2 / v) (x - a mu_k),   E[x0 | x] = sum_k w_k E[x0 | x, k]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from psg_core.spaces import NoiseSpace, coefficients


class AnalyticMixture:
    """Callable as the psg_core denoiser: ``model(x, sigma, conds) -> [x0_hat per cond]``."""

    def __init__(self, means: Tensor, std: float, weight: Tensor, prior: Tensor | None = None,
                 space: NoiseSpace = NoiseSpace.VE) -> None:
        self.means = means  # [K, C, H, W]
        self.std = float(std)
        self.weight = weight  # [K, D]
        self.prior = torch.zeros(means.shape[0], dtype=means.dtype) if prior is None else prior
        self.space = space
        self.calls = 0
        self.rows = 0

    @classmethod
    def random(cls, *, k: int = 3, shape: tuple[int, ...] = (4, 8, 8), dim: int = 8, std: float = 0.5,
               space: NoiseSpace = NoiseSpace.VE, seed: int = 0, dtype: torch.dtype = torch.float64,
               separation: float = 1.0) -> AnalyticMixture:
        g = torch.Generator().manual_seed(seed)
        means = separation * torch.randn(k, *shape, generator=g, dtype=dtype)
        weight = 2.0 * torch.randn(k, dim, generator=g, dtype=dtype)
        return cls(means, std, weight, space=space)

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def logits(self, cond: Tensor | None, batch: int) -> Tensor:
        """Mixture logits [B, K] for an embedding [D], [1, D] or [B, D] (None = zero embedding)."""
        if cond is None:
            return self.prior.expand(batch, -1)
        e = cond.reshape(-1, self.dim).to(self.weight.dtype)
        return (self.prior + e @ self.weight.T).expand(batch, -1)

    def posterior_weights(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """p(k | x_sigma, cond), [B, K]."""
        a, b = coefficients(self.space, sigma.to(x.dtype))
        a, b = a.reshape(-1, 1), b.reshape(-1, 1)
        v = a**2 * self.std**2 + b**2
        flat = x.reshape(x.shape[0], 1, -1)
        mu = self.means.reshape(1, self.means.shape[0], -1).to(x.dtype)
        sq = ((flat - a.unsqueeze(-1) * mu) ** 2).sum(-1)
        d = flat.shape[-1]
        loglik = -sq / (2 * v) - 0.5 * d * torch.log(2 * math.pi * v)
        return torch.softmax(self.logits(cond, x.shape[0]).to(x.dtype) + loglik, dim=-1)

    def posterior_mean(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        a, b = coefficients(self.space, sigma.to(x.dtype))
        w = self.posterior_weights(x, sigma, cond)
        a4 = a.reshape(-1, 1, *([1] * (x.ndim - 1)))
        v4 = a4**2 * self.std**2 + b.reshape(-1, 1, *([1] * (x.ndim - 1))) ** 2
        mu = self.means.unsqueeze(0).to(x.dtype)
        per_k = mu + (a4 * self.std**2 / v4) * (x.unsqueeze(1) - a4 * mu)
        return (w.reshape(*w.shape, *([1] * (x.ndim - 1))) * per_k).sum(1)

    def __call__(self, x: Tensor, sigma: Tensor, conds: Sequence[Tensor | None]) -> list[Tensor]:
        """ONE batched evaluation for all conds (counted in ``calls`` / ``rows``)."""
        self.calls += 1
        self.rows += x.shape[0] * len(conds)
        return [self.posterior_mean(x, sigma, c) for c in conds]

    def sample(self, n: int, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        probs = torch.softmax(self.logits(cond, 1)[0], dim=-1)
        k = torch.multinomial(probs, n, replacement=True, generator=generator)
        noise = torch.randn(n, *self.means.shape[1:], generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.std * noise

    def component_embedding(self, k: int, strength: float = 3.0) -> Tensor:
        """An embedding whose logits favour component k (least-squares through W)."""
        target = -strength * torch.ones(self.means.shape[0], dtype=self.weight.dtype)
        target[k] = strength
        return torch.linalg.lstsq(self.weight, target.unsqueeze(-1)).solution.squeeze(-1).unsqueeze(0)


def inversion_sigmas(n: int, space: NoiseSpace, dtype: torch.dtype = torch.float64) -> Tensor:
    """Ascending test schedule with a leading 0: SD-like log-spaced 0.03..14.6 for VE, uniform up to 1
    for FLOW."""
    if space is NoiseSpace.VE:
        levels = torch.exp(torch.linspace(math.log(0.03), math.log(14.6), n, dtype=dtype))
    else:
        levels = torch.linspace(1.0 / n, 1.0, n, dtype=dtype)
    return torch.cat([torch.zeros(1, dtype=dtype), levels])
