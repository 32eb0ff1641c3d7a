"""Inversion input convention, DPS step size and the single-definition guidance helpers, against
the exact analytic denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas
from psg_testing.perceptual_scenario import build_scene, make_decoder

from psg_core.ddim import InversionInput, ddim_invert, ddim_sample, ddim_step, offset_as_x0
from psg_core.guidance import TextGuidance, cfg, triple_combine
from psg_core.perceptual import PerceptualGuidance
from psg_core.spaces import NoiseSpace, coefficients

F64 = torch.float64


def mse(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (image - reference).pow(2).mean()


def round_trip_rmse(space: NoiseSpace, steps: int, convention: InversionInput | None,
                    seeds: int = 3) -> float:
    """Plain inversion (no refinement) then unguided DDIM back; RMSE to the clean latent, mean over seeds."""
    errors = []
    for seed in range(seeds):
        model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
        source = model.component_embedding(0)
        x0 = model.sample(1, source, torch.Generator().manual_seed(seed + 10))
        sigmas = inversion_sigmas(steps, space)
        options = {} if convention is None else {"convention": convention}  # None: the default
        traj = ddim_invert(model, x0, sigmas, source, space=space, **options)
        null = torch.zeros(1, model.dim, dtype=F64)
        back = ddim_sample(model, traj.noise, sigmas.flip(0), TextGuidance(null, source, source, 1.0, 0.0),
                           space=space)
        errors.append(float((back - x0).pow(2).mean().sqrt()))
    return sum(errors) / len(errors)


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_default_inversion_input_beats_the_unscaled_latent(space: NoiseSpace) -> None:
    """The default (the reference's DDPM latent at the next level, and its flow analogue) gives a
    smaller 50-step round trip than feeding the unscaled latent, in both spaces."""
    default = round_trip_rmse(space, 50, InversionInput.RESCALED)
    unscaled = round_trip_rmse(space, 50, InversionInput.LATENT)
    print(f"{space.value}: 50-step round-trip rmse rescaled {default:.3e} vs unscaled {unscaled:.3e}")
    assert round_trip_rmse(space, 50, None) == default, "the default must be the rescaled input"
    assert default < 0.9 * unscaled


def test_ve_rescaled_input_is_the_reference_next_step() -> None:
    """One VE inversion step equals prompt-to-prompt's ``next_step`` written in DDPM variables:
    the UNet sees the current DDPM latent z = x sqrt(abar) at the next timestep."""
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, seed=1)
    source = model.component_embedding(0)
    x = 1.3 * torch.randn(1, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    s, s_next = torch.tensor(0.7, dtype=F64), torch.tensor(1.4, dtype=F64)
    ours = ddim_invert(model, x, torch.stack([torch.zeros((), dtype=F64), s, s_next]), source).latents[-1]
    # reference: the first step (from 0) then next_step from s to s_next, in DDPM variables
    first = ddim_invert(model, x, torch.stack([torch.zeros((), dtype=F64), s]), source).latents[-1]
    abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
    z = first * abar.sqrt()
    # the model's eps at (z, t_next): ComfyUI's D takes x = z / sqrt(abar_next) at sigma s_next
    x_model = z / abar_next.sqrt()
    eps = (x_model - model(x_model, s_next.reshape(1), [source])[0]) / s_next
    x0_pred = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
    z_next = abar_next.sqrt() * x0_pred + (1 - abar_next).sqrt() * eps
    torch.testing.assert_close(ours, z_next / abar_next.sqrt())


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_offset_as_x0_moves_the_ddim_step_by_the_offset(space: NoiseSpace) -> None:
    g = torch.Generator().manual_seed(5)
    x, x0, offset = (torch.randn(2, 4, 8, 8, dtype=F64, generator=g) for _ in range(3))
    for s, s_next in ((0.9, 0.6), (0.6, 0.0)):
        s_t, n_t = torch.tensor(s, dtype=F64), torch.tensor(s_next, dtype=F64)
        moved = ddim_step(x, s_t, n_t, x0 + offset_as_x0(offset, s_t, n_t, space), space)
        torch.testing.assert_close(moved, ddim_step(x, s_t, n_t, x0, space) + offset)


def test_guidance_helpers_are_the_formulas() -> None:
    g = torch.Generator().manual_seed(6)
    n, s, e = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    assert torch.equal(cfg([n, s], 7.5), n + 7.5 * (s - n))
    assert torch.equal(triple_combine(n, s, e, 2.0, 5.0), n + 2.0 * (s - n) + 5.0 * (e - n))
    assert torch.equal(triple_combine(n, None, e, 0.0, 5.0), n + 5.0 * (e - n))
    guidance = TextGuidance(n, s, e, 0.0, 5.0)
    assert guidance.total_scale == 5.0 and torch.equal(guidance.combine([n, e]),
                                                       triple_combine(n, s, e, 0.0, 5.0))


# ----------------------------------------------------------------------------- DPS moves x_next in full
def test_dps_moves_x_next_by_the_full_correction() -> None:
    decode = make_decoder(factor=2)
    torch.manual_seed(4)
    weight = torch.randn(4, 4) / 2

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", weight, x) / (1 + 2.0**2)

    reference = torch.rand(1, 3, 16, 16)
    for space in NoiseSpace:
        x = torch.randn(1, 4, 8, 8) * 2
        sigma, sigma_next = (torch.tensor([0.8]), torch.tensor([0.5])) if space is NoiseSpace.FLOW else \
            (torch.tensor([2.0]), torch.tensor([1.0]))
        x0_hat = predict(x).detach()
        eps_hat = (x - coefficients(space, sigma)[0] * x0_hat) / sigma
        hook = PerceptualGuidance(decode, reference, loss=mse, scale=1.0, through_model=True)
        x0, eps = hook(step=0, total=10, x=x, sigma=sigma, sigma_next=sigma_next, x0_hat=x0_hat,
                       eps_hat=eps_hat, predict=predict, space=space)
        a_n, b_n = coefficients(space, sigma_next)
        move = (a_n * x0 + b_n * eps) - (a_n * x0_hat + b_n * eps_hat)  # change of x_next
        # the move is the DPS step found at x_t: length scale / n of rms(x0_hat), down the loss
        torch.testing.assert_close(move.pow(2).mean().sqrt(), 0.1 * x0_hat.pow(2).mean().sqrt())
        assert mse(decode(predict(x + move)), reference) < mse(decode(predict(x)), reference)


def test_dps_guiding_only_the_last_step_changes_the_output_and_counts_it() -> None:
    scene = build_scene(steps=50)
    plain = scene.sample()
    hook = scene.guide(mse, scale=1.0, through_model=True, start=49 / 50)
    guided = scene.sample(hook)
    counted = [i for i, v in enumerate(hook.losses) if not math.isnan(v)]
    change = float((guided - plain).abs().max())
    print(f"DPS on the last step only: output change {change:.3e}, counted steps {counted}")
    assert counted == [49]
    assert change > 1e-3


def test_a_step_that_changes_nothing_is_not_counted() -> None:
    scene = build_scene(steps=10)
    zero_loss = lambda image, reference: 0.0 * image.sum()  # noqa: E731  zero gradient everywhere
    for through_model in (False, True):
        hook = scene.guide(zero_loss, scale=1.0, through_model=through_model)
        out = scene.sample(hook)
        assert torch.equal(out, scene.sample()) and all(math.isnan(v) for v in hook.losses), through_model
