"""Plain DDIM round trip on the exact analytic denoiser: what the inversion step shows the model.

For each noise space (VE: SD1.x/SD2.x/SDXL; flow: SD3/Flux) and two schedules, inverts a sample
in N steps and samples it back unguided, and prints the RMSE to the clean latent for

- ``latent``   D(x_s, s'): the unscaled latent at the next level (the pack's former input);
- ``rescaled`` D(x_s r(s')/r(s), s'), r = sqrt(a^2 + b^2): prompt-to-prompt's ``next_step`` (the
  current DDPM latent at the next timestep) for VE, and the same variance-preserving scaling for
  flow (the default);
- ``rescaled + refine 2``: the default with 2 fixed-point iterations (2 extra passes per step);

side by side, from the same run (mean over 3 seeds), with denoiser calls per run.

Run: .venv/bin/python -m benchmarks.inversion_input   (prints markdown; about a minute on a CPU)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.ddim import InversionInput, ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.spaces import NoiseSpace

ROOT = Path(__file__).resolve().parents[1]

F64 = torch.float64
SEEDS = 3
STEPS = (10, 50, 200)


def comfy_schedule(steps: int, space: NoiseSpace) -> torch.Tensor:
    """ComfyUI's 'simple' schedule, ascending with a leading 0: SD1.5's discrete sigmas (scaled-linear
    betas 0.00085..0.012, 1000 steps) for VE, SD3's shift-3 flow sigmas for flow."""
    t = torch.arange(1, 1001, dtype=F64)
    if space is NoiseSpace.VE:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
        abar = torch.cumprod(1 - betas, 0)
        table = ((1 - abar) / abar).sqrt()
    else:
        u = t / 1000
        table = 3.0 * u / (1 + 2.0 * u)
    stride = len(table) / steps
    picked = torch.stack([table[-(1 + int(i * stride))] for i in range(steps)])  # descending
    return torch.cat([torch.zeros(1, dtype=F64), picked.flip(0)])


SCHEDULES = {"analytic test schedule": inversion_sigmas, "ComfyUI simple (SD1.5 / SD3)": comfy_schedule}


def round_trip(space: NoiseSpace, sigmas: torch.Tensor, convention: InversionInput,
               refine: int) -> tuple[float, int]:
    errors, calls = [], 0
    for seed in range(SEEDS):
        model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=seed)
        source = model.component_embedding(0)
        null = torch.zeros(1, model.dim, dtype=F64)
        x0 = model.sample(1, source, torch.Generator().manual_seed(seed + 10))
        traj = ddim_invert(model, x0, sigmas, source, space=space, convention=convention,
                           fixed_point_iters=refine)
        calls = model.calls
        back = ddim_sample(model, traj.noise, sigmas.flip(0), TextGuidance(null, source, source, 1.0, 0.0),
                           space=space)
        errors.append(float((back - x0).pow(2).mean().sqrt()))
    return sum(errors) / len(errors), calls


def main() -> None:
    variants = (("latent", InversionInput.LATENT, 0), ("rescaled", InversionInput.RESCALED, 0),
                ("rescaled + refine 2", InversionInput.RESCALED, 2))
    print("| space | schedule | steps | " + " | ".join(f"{name} RMSE" for name, _, _ in variants)
          + " | latent / rescaled | inversion passes (plain / refine 2) |")
    print("|---|---|---|" + "---|" * (len(variants) + 2))
    for space in NoiseSpace:
        for label, schedule in SCHEDULES.items():
            for steps in STEPS:
                sigmas = schedule(steps, space)
                results = [round_trip(space, sigmas, conv, refine) for _, conv, refine in variants]
                errs = [e for e, _ in results]
                ratio = errs[0] / errs[1] if errs[1] > 0 else math.inf
                print(f"| {space.value} | {label} | {steps} | " + " | ".join(f"{e:.3e}" for e in errs)
                      + f" | {ratio:.2f} | {results[1][1]} / {results[2][1]} |")


if __name__ == "__main__":
    main()
