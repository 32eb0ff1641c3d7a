"""Perceptual-guidance table for docs/method.md, measured on the exact analytic denoiser.

The analytic edit scene (tests/psg_testing/perceptual_scenario.py): a photo from the source
component, inverted in 50 steps and sampled back under the edit prompt (CFG 2), with perceptual
guidance at several scales, for both gradient paths and two losses (pixel MSE and LPIPS-alex with a
random backbone: no ImageNet weights offline). Columns: the loss between the decoded result and
the photo, relative to unguided; how much of the edit survives (1 = all, 0 = undone); denoiser
backward passes per run.

Run: .venv/bin/python -m benchmarks.perceptual_table   (prints markdown)
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lpips
import torch
from psg_testing.perceptual_scenario import CountBackward, build_scene, instrumented

from psg_core.losses import ImageLoss

ROOT = Path(__file__).resolve().parents[1]

SCALES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
logger = logging.getLogger("perceptual_table")


def mse(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (image - reference).pow(2).mean()


def table() -> str:
    scene = build_scene(steps=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        metric = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    losses = {"MSE": mse, "LPIPS-alex (random backbone)": ImageLoss(metric)}
    unguided = scene.sample()
    rows = ["| loss | gradient path | scale | loss to photo (rel. unguided) | edit retained | denoiser "
            "backwards |",
            "|---|---|---|---|---|---|"]
    for name, loss in losses.items():
        base = scene.distance(unguided, loss)
        for through_model, path in ((False, "x0 (MPGD)"), (True, "through model (DPS)")):
            for scale in SCALES:
                CountBackward.count = 0
                out = scene.sample(scene.guide(loss, scale=scale, through_model=through_model),
                                   denoise=instrumented(scene.model))
                rows.append(f"| {name} | {path} | {scale:g} | {scene.distance(out, loss) / base:.3f} "
                            f"| {scene.edit_retained(out):.2f} | {CountBackward.count} |")
    return "\n".join(rows)


def steps_table(steps: tuple[int, ...] = (30, 50, 100)) -> str:
    """The same scale across step counts (MSE, MPGD, scale 1): the step rule spreads one budget."""
    rows = ["| steps | loss to photo (rel. unguided) | edit retained |", "|---|---|---|"]
    for n in steps:
        scene = build_scene(steps=n)
        base = scene.distance(scene.sample(), mse)
        out = scene.sample(scene.guide(mse, scale=1.0))
        rows.append(f"| {n} | {scene.distance(out, mse) / base:.3f} | {scene.edit_retained(out):.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("%s\n\n%s", table(), steps_table())
