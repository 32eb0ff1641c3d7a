"""Pictures for people: source | edit | difference-heatmap grids and per-step loss plots.

Drawn with torch and Pillow only (matplotlib is not a ComfyUI dependency). Every function
returns a float image tensor ``(3, H, W)`` (or ``(B, 3, H, W)``) in [0, 1]; sizes follow from
the layout constants below so callers and tests can predict them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

LABEL_HEIGHT = 22
"""Caption strip above each grid panel."""
GAP = 4
"""Pixels between panels."""
BAR_WIDTH = 16
"""Colour bar stripe width; the tick labels take ``BAR_LABEL_WIDTH`` more."""
BAR_LABEL_WIDTH = 52
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)

# A monotone "heat" map (black -> purple -> red -> orange -> yellow -> white): brightness
# grows with the value, so it also reads in greyscale.
_HEAT = torch.tensor([
    [0.00, 0.00, 0.02],
    [0.30, 0.05, 0.45],
    [0.75, 0.10, 0.30],
    [0.97, 0.45, 0.05],
    [0.99, 0.85, 0.20],
    [1.00, 1.00, 0.95],
])
_CURVE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
                  (23, 190, 207)]


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's built-in font (scalable in Pillow >= 10.1), so nothing is read from disk."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1], any shape S -> RGB in [0, 1], shape (3, *S), piecewise linear through ``_HEAT``."""
    v = values.float().clamp(0.0, 1.0) * (len(_HEAT) - 1)
    lo = v.floor().long().clamp(max=len(_HEAT) - 2)
    frac = (v - lo.float()).unsqueeze(-1)
    heat = _HEAT.to(values.device)
    rgb = heat[lo] * (1 - frac) + heat[lo + 1] * frac
    return rgb.movedim(-1, 0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL image (any mode) -> (3, H, W) RGB float in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def difference_map(source: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute difference over channels: (B, 3, H, W) x2 -> (B, H, W) in [0, 1]."""
    return (source.float() - edit.float()).abs().mean(1)


def grid_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of a ``comparison_grid`` made from ``height`` x ``width`` images."""
    return height + LABEL_HEIGHT, 3 * width + 3 * GAP + BAR_WIDTH + BAR_LABEL_WIDTH


def comparison_grid(source: torch.Tensor, edit: torch.Tensor, *, vmax: float | None = None,
                    labels: Sequence[str] = ("source", "edit", "|source - edit|")) -> torch.Tensor:
    """source | edit | abs-difference heatmap with a colour bar, one grid per batch item.

    ``source``/``edit``: (B, 3, H, W) in [0, 1] (batch 1 broadcasts); the edit is resized to
    the source when the sizes differ. ``vmax``: the difference mapped to the top colour (None:
    the largest difference of each item, so small changes stay visible; set it to compare
    grids with each other). Returns (B, 3, *grid_size(H, W)).
    """
    for name, t in (("source", source), ("edit", edit)):
        if not torch.is_tensor(t) or t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"grid: the {name} image must be (batch, 3, height, width), "
                             f"got {tuple(t.shape)}.")
    if edit.shape[-2:] != source.shape[-2:]:
        logger.info("grid: resizing the edit %s to the source size %s", tuple(edit.shape[-2:]),
                    tuple(source.shape[-2:]))
        edit = F.interpolate(edit.float(), size=source.shape[-2:], mode="bilinear", align_corners=False)
    n = max(source.shape[0], edit.shape[0])
    source = source.float().cpu().expand(n, -1, -1, -1)
    edit = edit.float().cpu().expand(n, -1, -1, -1)
    if vmax is not None and vmax <= 0:
        raise ValueError(f"grid: vmax must be positive (got {vmax}); leave it empty for automatic scaling.")
    diffs = difference_map(source, edit)
    return torch.stack([_one_grid(source[i], edit[i], diffs[i], vmax, labels) for i in range(n)])


def _one_grid(source: torch.Tensor, edit: torch.Tensor, diff: torch.Tensor, vmax: float | None,
              labels: Sequence[str]) -> torch.Tensor:
    h, w = source.shape[-2:]
    top = float(vmax) if vmax is not None else max(float(diff.max()), 1e-6)
    heat = colormap(diff / top)
    gh, gw = grid_size(h, w)
    canvas = Image.new("RGB", (gw, gh), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    f = font(13)
    for k, (panel, label) in enumerate(zip((source, edit, heat), labels, strict=False)):
        x = k * (w + GAP)
        canvas.paste(to_pil(panel), (x, LABEL_HEIGHT))
        draw.text((x + 2, 3), str(label), fill=TEXT, font=f)
    # colour bar: top = vmax, bottom = 0
    bx = 3 * (w + GAP)
    ramp = torch.linspace(1.0, 0.0, h).view(h, 1).expand(h, BAR_WIDTH)
    canvas.paste(to_pil(colormap(ramp)), (bx, LABEL_HEIGHT))
    draw.rectangle([bx, LABEL_HEIGHT, bx + BAR_WIDTH - 1, LABEL_HEIGHT + h - 1], outline=TEXT)
    small = font(11)
    for frac in (1.0, 0.5, 0.0):
        y = LABEL_HEIGHT + round((1.0 - frac) * (h - 1))
        draw.line([bx + BAR_WIDTH, y, bx + BAR_WIDTH + 3, y], fill=TEXT)
        ty = min(max(y - 6, LABEL_HEIGHT), LABEL_HEIGHT + h - 12)
        draw.text((bx + BAR_WIDTH + 5, ty), _fmt(top * frac), fill=TEXT, font=small)
    return from_pil(canvas)


# --------------------------------------------------------------------------- loss plots
def normalize_curves(losses: object) -> dict[str, list[float]]:
    """Per-step losses in any of the accepted shapes -> {name: [float, ...]}.

    Accepted: a sequence of numbers, a 1-D tensor, a mapping name -> sequence, or an object
    with a ``losses`` / ``values`` attribute holding one of those. Non-finite entries stay
    (as NaN) so step numbers keep their place; they are skipped when drawing.
    """
    for attr in ("losses", "values"):
        if not isinstance(losses, (Mapping, Sequence, torch.Tensor)) and hasattr(losses, attr):
            losses = getattr(losses, attr)
    if isinstance(losses, Mapping):
        return {str(k): _floats(v, str(k)) for k, v in losses.items()}
    return {"loss": _floats(losses, "loss")}


def _floats(values: object, name: str) -> list[float]:
    if torch.is_tensor(values):
        values = values.detach().float().reshape(-1).cpu().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"loss plot: '{name}' must be a list of numbers, got {type(values).__name__}.")
    out = []
    for v in values:
        try:
            out.append(float(v) if v is not None else math.nan)
        except (TypeError, ValueError) as err:
            raise ValueError(f"loss plot: '{name}' holds a non-number {v!r}.") from err
    return out


def loss_plot(losses: object, *, width: int = 512, height: int = 320, title: str = "guidance loss per step",
              log_y: bool = False) -> torch.Tensor:
    """A line plot of per-step losses as a (3, height, width) image; step on x, loss on y.

    ``log_y`` uses a log10 axis (needs positive values; falls back to linear otherwise).
    An empty record gives a plot that says so instead of failing.
    """
    if width < 160 or height < 120:
        raise ValueError(f"loss plot: size {width}x{height} is too small (at least 160x120).")
    curves = normalize_curves(losses)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    f, small = font(14), font(11)
    draw.text((8, 4), title, fill=TEXT, font=f)
    left, right, top, bottom = 58, width - 12, 26, height - 30
    draw.rectangle([left, top, right, bottom], outline=TEXT)
    finite = [v for vs in curves.values() for v in vs if math.isfinite(v)]
    steps = max((len(vs) for vs in curves.values()), default=0)
    if not finite:
        draw.text((left + 10, (top + bottom) // 2 - 7), "no losses recorded", fill=TEXT, font=f)
        return from_pil(canvas)
    use_log = log_y and min(finite) > 0
    if log_y and not use_log:
        logger.info("loss plot: a value <= 0, using a linear axis")

    def tr(v: float) -> float:
        return math.log10(v) if use_log else v

    lo, hi = tr(min(finite)), tr(max(finite))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(steps - 1, 1))
        y = bottom - (bottom - top) * (tr(v) - lo) / (hi - lo)
        return x, y

    for frac in (0.0, 0.5, 1.0):  # y ticks
        value = lo + frac * (hi - lo)
        y = bottom - frac * (bottom - top)
        draw.line([left - 4, y, left, y], fill=TEXT)
        draw.text((4, y - 6), _fmt(10**value if use_log else value), fill=TEXT, font=small)
    for i in sorted({0, (steps - 1) // 2, steps - 1}):  # x ticks
        x, _ = xy(i, finite[0])
        draw.line([x, bottom, x, bottom + 4], fill=TEXT)
        draw.text((x - 4, bottom + 6), str(i), fill=TEXT, font=small)
    draw.text(((left + right) // 2 - 12, height - 14), "step", fill=TEXT, font=small)
    for k, (name, values) in enumerate(curves.items()):
        colour = _CURVE_COLOURS[k % len(_CURVE_COLOURS)]
        segment: list[tuple[float, float]] = []
        for i, v in enumerate(values + [math.nan]):
            if math.isfinite(v):
                segment.append(xy(i, v))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=2)
            for px, py in segment if len(segment) == 1 else ():
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            segment = []
        if len(curves) > 1:
            draw.text((right - 120, top + 4 + 14 * k), f"- {name}", fill=colour, font=small)
    return from_pil(canvas)
