"""Null-text optimization starts each reverse step from the null the previous step ended with
(exact analytic denoiser; every call's null recorded by a wrapper)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import ddim_invert
from psg_core.null_text import NullTextSchedule, optimize_null_text
from psg_core.spaces import NoiseSpace

F64 = torch.float64


class RecordingDenoiser:
    """The analytic model, remembering (sigma, null) of every call that evaluates a null."""

    def __init__(self, model: AnalyticMixture, source: torch.Tensor) -> None:
        self.model, self.source = model, source
        self.nulls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor,
                 conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for cond in conds:
            if not (cond.shape == self.source.shape and torch.equal(cond, self.source)):
                self.nulls.append((float(sigma.flatten()[0]), cond.detach().clone()))
        return self.model(x, sigma, conds)


@pytest.mark.parametrize("schedule", list(NullTextSchedule))
def test_each_step_starts_from_the_previous_steps_null(schedule: NullTextSchedule) -> None:
    space = NoiseSpace.VE
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=0)
    source = model.component_embedding(0, strength=1.0)
    null = torch.zeros(1, model.dim, dtype=F64)
    x0 = model.sample(1, source, torch.Generator().manual_seed(1))
    traj = ddim_invert(model, x0, inversion_sigmas(10, space), source, space=space)
    recorder = RecordingDenoiser(model, source)

    nulls = optimize_null_text(recorder, traj, source, null, guidance_scale=7.5, inner_steps=4,
                               schedule=schedule)

    first_per_step: dict[float, torch.Tensor] = {}
    for sigma, cond in recorder.nulls:
        first_per_step.setdefault(sigma, cond)
    reverse_sigmas = traj.sigmas.flip(0)[:-1].tolist()  # the sigma each reverse step evaluates at
    assert len(first_per_step) == len(nulls) == len(reverse_sigmas)
    starts = [first_per_step[min(first_per_step, key=lambda s: abs(s - t))] for t in reverse_sigmas]
    torch.testing.assert_close(starts[0].to(F64), null.to(F64), rtol=0, atol=0)
    for j in range(1, len(nulls)):
        torch.testing.assert_close(starts[j].to(F64), nulls[j - 1].to(F64), rtol=0, atol=0,
                                   msg=f"reverse step {j} did not start from step {j - 1}'s null")
    assert any(not torch.equal(n.to(F64), null.to(F64)) for n in nulls[:-1]), (
        "the nulls never moved: check is void"
    )
