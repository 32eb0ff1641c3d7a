"""The analytic denoiser's closed form against a Monte-Carlo posterior mean."""

from __future__ import annotations

import pytest
import torch
from psg_testing.analytic import AnalyticMixture

from psg_core.spaces import NoiseSpace, coefficients


@pytest.mark.parametrize(("space", "sigma"), [(NoiseSpace.VE, 0.5), (NoiseSpace.VE, 2.0),
                                              (NoiseSpace.FLOW, 0.3), (NoiseSpace.FLOW, 0.7)])
def test_closed_form_matches_monte_carlo(space: NoiseSpace, sigma: float) -> None:
    model = AnalyticMixture.random(k=3, shape=(2, 1, 1), dim=4, std=0.4, space=space, seed=1, separation=1.5)
    cond = torch.randn(1, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    s = torch.tensor([sigma], dtype=torch.float64)
    a, b = (float(t) for t in coefficients(space, s))
    x_star = a * model.sample(1, cond, g) + b * torch.randn(1, 2, 1, 1, generator=g, dtype=torch.float64)

    # Self-normalised importance sampling: E[x0 | x*] = E_p[x0 N(x*; a x0, b^2)] / E_p[N(x*; a x0, b^2)].
    x0 = model.sample(400_000, cond, g)
    logw = -((x_star - a * x0) ** 2).flatten(1).sum(1) / (2 * b**2)
    w = torch.softmax(logw, 0)
    mc = (w.reshape(-1, 1, 1, 1) * x0).sum(0)
    se = torch.sqrt((w.reshape(-1, 1, 1, 1) ** 2 * (x0 - mc) ** 2).sum(0))

    closed = model(x_star, s, [cond])[0][0]
    z = ((closed - mc).abs() / se).max().item()
    print(f"{space.value} sigma={sigma}: max |closed - MC| = {(closed - mc).abs().max():.2e}, {z:.2f} "
          "standard errors")
    assert z < 5.0, f"closed form is {z:.1f} standard errors from the Monte-Carlo posterior mean"


def test_one_call_for_many_conds_and_gradients_reach_the_embedding() -> None:
    model = AnalyticMixture.random(seed=4)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    null = torch.zeros(1, model.dim, dtype=torch.float64, requires_grad=True)
    outs = model(x, torch.full((2,), 1.0, dtype=torch.float64), [null, model.component_embedding(0), None])
    assert model.calls == 1 and model.rows == 6 and len(outs) == 3
    outs[0].sum().backward()
    assert null.grad is not None and null.grad.abs().sum() > 0


def test_clean_latent_is_its_own_posterior_mean() -> None:
    for space in NoiseSpace:
        model = AnalyticMixture.random(space=space, seed=5)
        x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
        assert torch.allclose(model(x, torch.zeros(1, dtype=torch.float64), [None])[0], x)
