"""The README's first-screen pictures, regenerated from code:

- docs/images/graph.png: the one-node edit template (example_workflows/psg_edit.json) as its key
  nodes, drawn by the same renderer as the template thumbnails;
- docs/images/compare.png: PSG Compare Grid's picture (psg_eval.plots.comparison_grid, the function
  behind the node) of an edit made by the pack's core (DDIM inversion, triple-prompt guidance,
  perceptual guidance) on the EXACT Gaussian-mixture denoiser of the tests, in pixel space: no
  image model is involved, the "model" knows two pictures (the photo, and the photo with tiger
  stripes painted on the cat's head and a bluer background), so the picture shows what each stage
  does, not what Stable Diffusion would paint.

    .venv/bin/python -m scripts.readme_images
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from psg_testing.analytic import AnalyticMixture

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.losses import ImageLoss
from psg_core.perceptual import PerceptualGuidance
from psg_core.spaces import NoiseSpace
from psg_eval.plots import comparison_grid, font

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
WIDTH, HEIGHT = 192, 128
HEAD = (slice(8, 78), slice(52, 132))  # rows, columns of the cat's head in the 192x128 photo
F64 = torch.float64


def photo() -> torch.Tensor:
    from skimage import data

    img = Image.fromarray(data.chelsea()).resize((WIDTH, HEIGHT), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float64) / 255).permute(2, 0, 1)


def tiger(cat: torch.Tensor) -> torch.Tensor:
    """What the edit prompt asks for: stripes on the head, and (as text guidance alone tends to
    do) a changed background: here bluer."""
    out = cat.clone()
    out[2] = (out[2] * 1.35 + 0.12).clamp(0, 1)
    out[0] = out[0] * 0.8
    rows, cols = HEAD
    yy, xx = torch.meshgrid(torch.arange(HEIGHT, dtype=F64), torch.arange(WIDTH, dtype=F64), indexing="ij")
    stripes = (torch.sin((xx + 0.6 * yy) / 3.0) > 0.3).to(F64)
    orange = torch.tensor([0.95, 0.55, 0.1], dtype=F64).view(3, 1, 1)
    head = cat[:, rows, cols] * 0.3 + orange * 0.7
    out[:, rows, cols] = head * (1 - 0.85 * stripes[rows, cols])
    return out


def edit_pictures() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cat = photo()
    model = AnalyticMixture(torch.stack([cat, tiger(cat)]), std=0.25, weight=torch.eye(2, dtype=F64))
    source, edit = model.component_embedding(0, strength=10.0), model.component_embedding(1, strength=10.0)
    null = torch.zeros(1, 2, dtype=F64)
    levels = torch.exp(torch.linspace(math.log(0.03), math.log(14.6), 50, dtype=F64))
    up = torch.cat([torch.zeros(1, dtype=F64), levels])
    x0 = cat.unsqueeze(0)
    noise = ddim_invert(model, x0, up, source, space=NoiseSpace.VE).noise
    guidance = TextGuidance(null, source, edit, w_source=0.0, w_edit=2.0)
    plain = ddim_sample(model, noise, up.flip(0), guidance)
    mask = torch.zeros(1, 1, HEIGHT, WIDTH)
    mask[..., HEAD[0], HEAD[1]] = 1.0  # the head may change; LPIPS-style guidance keeps the rest
    perceptual = PerceptualGuidance(lambda z: z.float().clamp(0, 1), x0.float(),
                                    loss=ImageLoss(None, mask=mask, mse_weight=1.0), scale=2.0)
    guided = ddim_sample(model, noise, up.flip(0), guidance, perceptual=perceptual)
    return x0.float(), plain.float().clamp(0, 1), guided.float().clamp(0, 1)


def compare_picture() -> Image.Image:
    x0, plain, guided = edit_pictures()
    rows = [comparison_grid(x0, plain, vmax=0.5, labels=("photo", "text guidance only", "difference")),
            comparison_grid(x0, guided, vmax=0.5, labels=("photo", "+ perceptual guidance", "difference"))]
    grids = [Image.fromarray((r[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)) for r in rows]
    scale = 2
    w, h = grids[0].width * scale, grids[0].height * scale
    caption = ["Exact Gaussian-mixture denoiser in pixel space (the pack's test model), "
               "not Stable Diffusion:",
               "DDIM inversion, triple-prompt guidance (w_edit 2); below, the perceptual-guidance step (with",
               "pixel MSE where the nodes use LPIPS) keeps the photo outside the head box. "
               "Made by scripts/readme_images.py."]
    cap_h = 82
    canvas = Image.new("RGB", (w, 2 * h + cap_h), "white")
    for i, g in enumerate(grids):
        canvas.paste(g.resize((w, h), Image.NEAREST), (0, i * h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(caption):
        draw.text((6, 2 * h + 4 + 19 * i), line, fill="#222222", font=font(15))
    return canvas


def main() -> int:
    from . import build_workflows

    logging.basicConfig(level=logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    edit = next(wf for wf in build_workflows.all_workflows() if wf.name == "psg_edit")
    build_workflows.key_node_picture(edit, width=1152, title="psg_edit: one node edits a photo (SD1.5)").save(
        OUT / "graph.png", optimize=True)
    compare_picture().save(OUT / "compare.png", optimize=True)
    for name in ("graph.png", "compare.png"):
        print((OUT / name).relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
