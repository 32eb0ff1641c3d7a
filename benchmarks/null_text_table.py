"""Null-text optimization: how much of the CFG drift each schedule closes, and at what cost.

Exact Gaussian-mixture denoiser (tests/psg_testing/analytic.py), float64. Per seed: a latent drawn
from the source component, a fixed-point refined DDIM inversion (so the unguided round trip is
near exact and what is left under CFG is drift), then sampling back under CFG 7.5 on the source.

    drift closed = (err_cfg - err_nulltext) / (err_cfg - err_unguided)      (1 = all of it)

Run: .venv/bin/python -m benchmarks.null_text_table [--seeds 6] [--strength 3]   (prints markdown tables)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.null_text import NullTextSchedule, optimize_null_text
from psg_core.spaces import NoiseSpace

ROOT = Path(__file__).resolve().parents[1]

F64 = torch.float64
SCALE = 7.5
STEPS = (25, 50, 100)


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image RMSE [B]."""
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


STRENGTH = 3.0
"""Prompt strength: the source embedding's mixture logits are +-STRENGTH (--strength)."""


def scene(space: NoiseSpace, steps: int, seed: int, images: int = 1):
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
    source, edit = model.component_embedding(0, STRENGTH), model.component_embedding(1, STRENGTH)
    null = torch.zeros(1, model.dim, dtype=F64)
    x0 = model.sample(images, source, torch.Generator().manual_seed(seed + 1))
    sigmas = inversion_sigmas(steps, space)
    traj = ddim_invert(model, x0, sigmas, source, space=space, fixed_point_iters=2)
    return model, source, edit, null, x0, sigmas, traj


def measure(space: NoiseSpace, steps: int, seed: int, schedule: NullTextSchedule, images: int = 1,
            shared: bool = False) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(drift closed per image, denoiser calls per step, null-text RMSE per image)."""
    model, source, edit, null, x0, sigmas, traj = scene(space, steps, seed, images)
    rev = sigmas.flip(0)

    def err(w: float, nulls: list[torch.Tensor] | None = None) -> torch.Tensor:
        g = TextGuidance(null, source, edit, w_source=w, w_edit=0.0)
        return rmse(ddim_sample(model, traj.noise, rev, g, space=space, nulls=nulls), x0)

    unguided, plain = err(1.0), err(SCALE)
    model.calls = 0
    if shared:  # one null for the whole batch: optimize against the batch as one image
        nulls = _shared_nulls(model, traj, source, null, schedule)
    else:
        nulls = optimize_null_text(model, traj, source, null, guidance_scale=SCALE, schedule=schedule)
    calls = model.calls / steps
    fitted = err(SCALE, nulls)
    return (plain - fitted) / (plain - unguided), calls, fitted


def _shared_nulls(model: AnalyticMixture, traj, source, null, schedule) -> list[torch.Tensor]:
    """One null for all images: the batch as one wide image (the denoiser is per image, so its
    prediction for the wide image is the per-image predictions side by side)."""
    from psg_core.ddim import Trajectory

    levels, images, channels = traj.latents.shape[:3]
    wide = Trajectory(sigmas=traj.sigmas, space=traj.space,
                      latents=traj.latents.reshape(levels, 1, images * channels, *traj.latents.shape[3:]))

    def wide_model(x, sigma, conds):
        split = x.reshape(images, channels, *x.shape[2:])
        expanded = [c.expand(images, -1) if c is not None else None for c in conds]
        outs = model(split, sigma.expand(images), expanded)
        return [o.reshape(1, images * channels, *x.shape[2:]) for o in outs]

    nulls = optimize_null_text(wide_model, wide, source, null, guidance_scale=SCALE, schedule=schedule)
    return [n.expand(images, -1) for n in nulls]


def drift_table(seeds: int) -> str:
    rows = ["| space | steps | reference: drift closed (min / mean) | reference: calls per step |"
            " new default: drift closed (min / mean) | new default: calls per step |",
            "|---|---|---|---|---|---|"]
    for space in NoiseSpace:
        for steps in STEPS:
            cells = []
            for schedule in (NullTextSchedule.REFERENCE, NullTextSchedule.SECANT):
                closed, calls = [], []
                for seed in range(seeds):
                    c, k, _ = measure(space, steps, seed, schedule)
                    closed.append(float(c[0]))
                    calls.append(k)
                cells.append(f"{100 * min(closed):.1f}% / {100 * sum(closed) / len(closed):.1f}%")
                cells.append(f"{sum(calls) / len(calls):.1f}")
            rows.append(f"| {space.value} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def batch_table(images: int = 4, steps: int = 50, seeds: int = 4) -> str:
    rows = ["| space | seed | one null for the batch: worst-image RMSE (worst-image drift closed) |"
            " one null per image: worst-image RMSE (worst-image drift closed) |", "|---|---|---|---|"]
    for space in NoiseSpace:
        for seed in range(seeds):
            cells = []
            for shared in (True, False):
                closed, _, fitted = measure(space, steps, seed, NullTextSchedule.SECANT, images,
                                            shared=shared)
                cells.append(f"{fitted.max():.2e} ({100 * closed.min():.1f}%)")
            rows.append(f"| {space.value} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    global STRENGTH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--strength", type=float, default=STRENGTH, help="prompt logits +-this (default 3)")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch table")
    args = parser.parse_args()
    STRENGTH = args.strength
    torch.set_num_threads(1)
    print(drift_table(args.seeds))
    if not args.no_batch:
        print()
        print("Batches (4 images, 50 steps, new default):")
        print()
        print(batch_table())


if __name__ == "__main__":
    main()
