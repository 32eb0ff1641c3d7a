"""Reconstruction tables for docs/method.md, measured on the exact analytic denoiser.

Run: .venv/bin/python -m benchmarks.reconstruction_table   (prints markdown)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.null_text import direct_inversion_offsets, negative_prompt_nulls, optimize_null_text
from psg_core.spaces import NoiseSpace

ROOT = Path(__file__).resolve().parents[1]

F64 = torch.float64


schedule = inversion_sigmas


def problem(space: NoiseSpace, seed: int = 0):
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
    source, edit = model.component_embedding(0, 1.0), model.component_embedding(1, 1.0)
    null = torch.zeros(1, model.dim, dtype=F64)
    return model, source, edit, null, model.sample(1, source, torch.Generator().manual_seed(seed + 1))


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def steps_table() -> str:
    rows = ["| space | fixed-point iters | 10 steps | 25 steps | 50 steps | 100 steps | observed order |",
            "|---|---|---|---|---|---|---|"]
    for space in NoiseSpace:
        model, source, edit, null, x0 = problem(space)
        g = TextGuidance(null, source, edit, 1.0, 0.0)
        for iters in (0, 2):
            errs = []
            for n in (10, 25, 50, 100):
                sig = schedule(n, space)
                traj = ddim_invert(model, x0, sig, source, space=space, fixed_point_iters=iters)
                errs.append(rmse(ddim_sample(model, traj.noise, sig.flip(0), g, space=space), x0))
            order = math.log(errs[0] / errs[-1]) / math.log(10)
            cells = " | ".join(f"{e:.2e}" for e in errs)
            rows.append(f"| {space.value} | {iters} | {cells} | {order:.2f} |")
    return "\n".join(rows)


def cfg_row(space: NoiseSpace, n: int, scale: float) -> str:
    model, source, edit, null, x0 = problem(space)
    sig = schedule(n, space)
    traj = ddim_invert(model, x0, sig, source, space=space, fixed_point_iters=2)
    rev, g = sig.flip(0), TextGuidance(null, source, edit, scale, 0.0)

    def err(guidance: TextGuidance = g, **kw: object) -> float:
        return rmse(ddim_sample(model, traj.noise, rev, guidance, space=space, **kw), x0)

    model.calls = 0
    nulls = optimize_null_text(model, traj, source, null, guidance_scale=scale)
    passes = model.calls
    plain = err()
    cells = [err(TextGuidance(null, source, edit, 1.0, 0.0)), plain, err(nulls=nulls),
             err(nulls=negative_prompt_nulls(traj, source)),
             err(offsets=direct_inversion_offsets(model, traj, source, null, guidance_scale=scale))]
    shown = " | ".join(f"{c:.2e}" + (f" ({plain / c:.0f}x)" if 0 < c < plain and i > 1 else "")
                       for i, c in enumerate(cells))
    return f"| {space.value} | {shown} | {passes} / {10 * n} |"


def cfg_table(n: int = 25, scale: float = 7.5) -> str:
    rows = [f"| space | unguided | CFG {scale} plain | null-text (10 inner) | negative-prompt | "
            "direct offsets | null-text denoiser calls / 10 x steps |", "|---|---|---|---|---|---|---|"]
    rows += [cfg_row(space, n, scale) for space in NoiseSpace]
    return "\n".join(rows)


if __name__ == "__main__":
    print("### Reconstruction RMSE vs steps (inversion, then unguided DDIM back)\n")
    print(steps_table())
    print("\n### CFG drift and its cures (25 steps, fixed-point refined inversion)\n")
    print(cfg_table())
