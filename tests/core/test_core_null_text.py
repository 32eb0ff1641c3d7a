"""Null-text optimization and the fast modes cut the CFG reconstruction drift (analytic model)."""

from __future__ import annotations

import pytest
import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.null_text import (
    NullTextSchedule,
    direct_inversion_offsets,
    negative_prompt_nulls,
    optimize_null_text,
)
from psg_core.spaces import NoiseSpace

F64 = torch.float64
SCALE = 7.5


schedule = inversion_sigmas


def case(space: NoiseSpace, n: int = 25, seed: int = 0):
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
    source, edit = model.component_embedding(0, strength=1.0), model.component_embedding(1, strength=1.0)
    null = torch.zeros(1, model.dim, dtype=F64)
    x0 = model.sample(1, source, torch.Generator().manual_seed(seed + 1))
    sigmas = schedule(n, space)
    # fixed-point refined inversion: the unguided path retraces it closely, so what remains is CFG drift
    traj = ddim_invert(model, x0, sigmas, source, space=space, fixed_point_iters=2)
    return model, source, edit, null, x0, sigmas, traj


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_each_mode_cuts_the_cfg_drift(space: NoiseSpace) -> None:
    model, source, edit, null, x0, sigmas, traj = case(space)
    rev = sigmas.flip(0)
    g = TextGuidance(null, source, edit, w_source=SCALE, w_edit=0.0)

    def err(**kw: object) -> float:
        return rmse(ddim_sample(model, traj.noise, rev, g, space=space, **kw), x0)

    unguided = rmse(ddim_sample(model, traj.noise, rev, TextGuidance(null, source, edit, 1.0, 0.0),
                                space=space), x0)
    plain = err()
    nulls = optimize_null_text(model, traj, source, null, guidance_scale=SCALE, inner_steps=10)
    null_text = err(nulls=nulls)
    negative = err(nulls=negative_prompt_nulls(traj, source))
    direct = err(offsets=direct_inversion_offsets(model, traj, source, null, guidance_scale=SCALE))
    print(f"\n{space.value}: rmse unguided {unguided:.3e} | CFG {SCALE} plain {plain:.3e} | null-text "
          f"{null_text:.3e}"
          f" ({plain / null_text:.1f}x) | negative-prompt {negative:.3e} ({plain / negative:.1f}x)"
          f" | direct offsets {direct:.3e} (exact up to rounding)")
    assert len(nulls) == traj.steps
    assert plain > 10 * unguided, "CFG 7.5 should drift away from the inversion"
    assert null_text < plain / 5
    assert negative < plain / 5
    assert direct < 1e-8 and direct < plain / 1e6


def test_null_text_warm_starts_stops_early_and_reports_progress() -> None:
    model, source, edit, null, x0, sigmas, traj = case(NoiseSpace.VE, n=10)
    steps: list[int] = []
    model.calls = 0
    nulls = optimize_null_text(model, traj, source, null, guidance_scale=SCALE, inner_steps=10, tol=1e9,
                               callback=lambda s, t, x, x0h: steps.append(s),
                               schedule=NullTextSchedule.REFERENCE)
    # tol huge: one inner step per reverse step; calls = source + 1 inner + final step, per step
    assert model.calls == 3 * traj.steps
    model.calls = 0
    optimize_null_text(model, traj, source, null, guidance_scale=SCALE, tol=1e9)
    # secant, tol huge: the first call (null + source in one batch) is the whole step
    assert model.calls == traj.steps
    assert sorted(set(steps)) == list(range(traj.steps))
    assert all(n.shape == null.shape for n in nulls)
    assert not any(n.requires_grad for n in nulls)

    class Stop(Exception):
        pass

    def stop(step, total, x, x0h):
        raise Stop

    with pytest.raises(Stop):
        optimize_null_text(model, traj, source, null, callback=stop)
