"""DDIM inversion, sampling and triple-prompt guidance against the exact analytic denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.spaces import NoiseSpace

F64 = torch.float64


schedule = inversion_sigmas


def setup(space: NoiseSpace, seed: int = 0) -> tuple[AnalyticMixture, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor]:
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
    source, edit = model.component_embedding(0), model.component_embedding(1)
    null = torch.zeros(1, model.dim, dtype=F64)
    x0 = model.sample(1, source, torch.Generator().manual_seed(seed + 10))
    return model, source, edit, null, x0


def reconstruct(model: AnalyticMixture, x0: torch.Tensor, guidance: TextGuidance, n: int,
                space: NoiseSpace, **kw: object) -> torch.Tensor:
    sigmas = schedule(n, space)
    traj = ddim_invert(model, x0, sigmas, guidance.source, space=space)
    return ddim_sample(model, traj.noise, sigmas.flip(0), guidance, space=space, **kw)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_reconstruction_error_shrinks_with_steps(space: NoiseSpace) -> None:
    model, source, edit, null, x0 = setup(space)
    guidance = TextGuidance(null, source, edit, w_source=1.0, w_edit=0.0)
    steps = [10, 25, 50, 100]
    errors = [rmse(reconstruct(model, x0, guidance, n, space), x0) for n in steps]
    orders = [math.log(errors[i] / errors[i + 1]) / math.log(steps[i + 1] / steps[i]) for i in range(3)]
    print(f"{space.value}: rmse {[f'{e:.2e}' for e in errors]}, "
          f"observed order {[f'{o:.2f}' for o in orders]}")
    assert all(errors[i + 1] < errors[i] for i in range(3)), errors
    assert sum(orders) / 3 > 0.5, f"inversion should converge at first order or better, got {orders}"


def test_one_denoiser_call_per_step_whatever_the_conds() -> None:
    model, source, edit, null, x0 = setup(NoiseSpace.VE)
    sigmas = schedule(12, NoiseSpace.VE).flip(0)
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    for guidance in (TextGuidance(null, source, edit, 2.0, 7.5), TextGuidance(null, source, edit, 0.0, 7.5),
                     TextGuidance(null, source, edit, 7.5, 0.0)):
        model.calls = model.rows = 0
        ddim_sample(model, x, sigmas, guidance)
        assert model.calls == 12
        assert model.rows == 12 * 2 * len(guidance.conds())


def test_zero_weights_equal_their_definitions_exactly() -> None:
    model, source, edit, null, x0 = setup(NoiseSpace.VE)
    sigmas = schedule(10, NoiseSpace.VE).flip(0)
    x = torch.randn(1, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    other = model.component_embedding(2)
    # w_edit = 0: the edit prompt plays no part; w_source = 0: the source prompt plays no part.
    a = ddim_sample(model, x, sigmas, TextGuidance(null, source, edit, 7.5, 0.0))
    b = ddim_sample(model, x, sigmas, TextGuidance(null, source, other, 7.5, 0.0))
    assert torch.equal(a, b)
    c = ddim_sample(model, x, sigmas, TextGuidance(null, source, edit, 0.0, 7.5))
    d = ddim_sample(model, x, sigmas, TextGuidance(null, other, edit, 0.0, 7.5))
    assert torch.equal(c, d)
    # and the combination is the formula, term by term
    outs = model(x, sigmas[:1], [null, source, edit])
    g = TextGuidance(null, source, edit, 2.0, 5.0)
    assert torch.equal(g.combine(outs), outs[0] + 2.0 * (outs[1] - outs[0]) + 5.0 * (outs[2] - outs[0]))


def test_edit_moves_mixture_mass_toward_the_edit_component() -> None:
    model, source, edit, null, x0 = setup(NoiseSpace.VE, seed=3)
    n = 30
    sigmas = schedule(n, NoiseSpace.VE)
    traj = ddim_invert(model, x0, sigmas, source)
    recon = ddim_sample(model, traj.noise, sigmas.flip(0), TextGuidance(null, source, edit, 1.0, 0.0))
    edited = ddim_sample(model, traj.noise, sigmas.flip(0), TextGuidance(null, source, edit, 0.0, 3.0))
    tiny = torch.full((1,), 1e-3, dtype=F64)
    mass_recon = model.posterior_weights(recon, tiny, None)[0, 1].item()
    mass_edit = model.posterior_weights(edited, tiny, None)[0, 1].item()
    print(f"mass on the edit component: reconstruction {mass_recon:.3f}, edit {mass_edit:.3f}")
    assert mass_edit > mass_recon + 0.5


def test_same_inputs_same_output_bitwise() -> None:
    outs = []
    for _ in range(2):
        model, source, edit, null, x0 = setup(NoiseSpace.FLOW, seed=7)
        outs.append(reconstruct(model, x0, TextGuidance(null, source, edit, 1.5, 4.0), 20, NoiseSpace.FLOW))
    assert torch.equal(outs[0], outs[1])


def test_perceptual_seam_corrects_the_step() -> None:
    model, source, edit, null, x0 = setup(NoiseSpace.VE)
    sigmas = schedule(8, NoiseSpace.VE).flip(0)
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    guidance = TextGuidance(null, source, edit, 1.0, 2.0)
    seen: list[int] = []

    def hook(*, step, total, x, sigma, sigma_next, x0_hat, eps_hat, predict, space):
        seen.append(step)
        assert torch.allclose(predict(x), x0_hat) and total == 8 and space is NoiseSpace.VE
        return (x0_hat + 0.25, eps_hat) if step == total - 1 else (x0_hat, eps_hat)

    plain = ddim_sample(model, x, sigmas, guidance)
    hooked = ddim_sample(model, x, sigmas, guidance, perceptual=hook)
    assert seen == list(range(8))
    assert torch.allclose(hooked - plain, torch.full_like(plain, 0.25))


def test_callback_exceptions_propagate_and_bad_schedules_are_refused() -> None:
    model, source, edit, null, x0 = setup(NoiseSpace.VE)

    class Stop(Exception):
        pass

    def cb(step, total, x, x0_hat):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        ddim_invert(model, x0, schedule(6, NoiseSpace.VE), source, callback=cb)
    with pytest.raises(Stop):
        ddim_sample(model, x0, schedule(6, NoiseSpace.VE).flip(0), None, callback=cb)
    with pytest.raises(ValueError, match="start at 0"):
        ddim_invert(model, x0, schedule(6, NoiseSpace.VE).flip(0), source)
    with pytest.raises(ValueError, match="same number of steps"):
        ddim_sample(model, x0, schedule(6, NoiseSpace.VE).flip(0), TextGuidance(null, source, edit, 1, 0),
                    nulls=[null] * 3)


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_fixed_point_refinement_makes_inversion_retrace(space: NoiseSpace) -> None:
    model, source, edit, null, x0 = setup(space)
    sigmas = schedule(25, space)
    guidance = TextGuidance(null, source, edit, w_source=1.0, w_edit=0.0)
    errors = []
    for iters in (0, 1, 3):
        model.calls = 0
        traj = ddim_invert(model, x0, sigmas, source, space=space, fixed_point_iters=iters)
        assert model.calls == 25 + 24 * iters  # no refinement of the step from sigma 0
        errors.append(rmse(ddim_sample(model, traj.noise, sigmas.flip(0), guidance, space=space), x0))
    print(f"{space.value}: rmse with 0/1/3 fixed-point iterations {[f'{e:.2e}' for e in errors]}")
    assert errors[2] < errors[1] < errors[0] and errors[2] < errors[0] / 20
