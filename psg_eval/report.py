"""Batch report of edits: CSV + JSON + one offline HTML page, from neutral inputs.

Input: one :class:`ReportItem` per edit (the photo, the edited image, the edited region, the
prompts, numbers measured elsewhere). Whoever made the edits adapts its own files to that:
``psg_cli/report.py`` does it for ``edit-batch`` results and journals.

The report measures each ``ok`` item itself from the image files: ``mse``, ``psnr``, ``ssim``
(and ``lpips`` when given an LPIPS module) on the whole image and, with a mask or mask_box,
the ``bg_`` background-only variants (:mod:`psg_eval.image_metrics`). When the edit's size
differs from the photo's (VAE sizes are multiples of 8), the photo is resized to the edit
first. A provided number is kept unless the report measures one of the same name. Per edit
type and overall: mean and population standard deviation (ddof 0) over the items that have
the metric.

Outputs in ``out_dir``: ``report.csv`` (one row per item), ``report.json`` (items, per-type
and overall statistics) and ``report.html``. Thumbnails are JPEG files in ``thumbs/`` linked
from the page (items are measured one at a time and their images dropped, so 10,000 items fit
in memory and the page opens); ``thumbnails="inline"`` embeds them as data URIs instead (one
self-contained file, for small batches).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import image_metrics, plots

logger = logging.getLogger(__name__)

SCHEMA = "psg-report/1"
UNTYPED = "untyped"
THUMB_SIZE = 192
MEASURED = ("psnr", "ssim", "lpips", "mse")
STATUSES = ("ok", "failed", "pending")


@dataclass
class ReportItem:
    """One edit as the report reads it.

    ``mask`` (an image file, white = edited region) or ``mask_box`` (``[x0, y0, x1, y1]``
    fractions of width and height) marks the edited region for the ``bg_`` metrics (PIE-Bench
    convention); neither = no background metrics. Only ``status == "ok"`` items are measured.
    ``metrics``: numbers measured elsewhere (e.g. CLIPScore), reported beside the measured ones.
    """

    id: str
    photo: Path | None
    edited: Path | None
    type: str = UNTYPED
    status: str = "ok"
    mask: Path | None = None
    mask_box: Sequence[float] | None = None
    source: str = ""
    target: str = ""
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ItemReport:
    """One item as reported: what it was, its metrics and (for HTML) its images."""

    id: str
    type: str
    status: str
    source: str = ""
    target: str = ""
    error: str | None = None
    image: str | None = None
    output: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    thumbs: dict[str, str] = field(default_factory=dict)
    """Thumbnail files (relative to the report folder) once written; ``images`` is then dropped."""


@dataclass
class Report:
    items: list[ItemReport]
    metric_names: list[str]
    by_type: dict[str, dict[str, dict[str, float | int]]]
    overall: dict[str, dict[str, float | int]]
    label: str
    """What was reported on (e.g. the results files), shown on the page."""


# --------------------------------------------------------------------------- measuring
def load_image(path: Path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float in [0, 1]."""
    with Image.open(path) as im:
        return plots.from_pil(im)[None]


def _load_mask(path: Path, height: int, width: int) -> torch.Tensor:
    with Image.open(path) as im:
        m = im.convert("L").resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None, None]


def box_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    """``[x0, y0, x1, y1]`` fractions -> (1, 1, H, W) mask, 1 inside the box (the edited region)."""
    if len(box) != 4:
        raise ValueError(f"report: mask_box must be [x0, y0, x1, y1] fractions, got {box!r}.")
    x0, y0, x1, y1 = (float(v) for v in box)
    m = torch.zeros(1, 1, height, width)
    m[..., round(y0 * height): round(y1 * height), round(x0 * width): round(x1 * width)] = 1.0
    return m


def measure_item(item: ReportItem, lpips_module: torch.nn.Module | None = None) -> ItemReport:
    """The metrics of one edit (see the module docstring)."""
    if item.status not in STATUSES:
        raise ValueError(f"report: item {item.id}: status must be one of {', '.join(STATUSES)}, "
                         f"got {item.status!r}.")
    out = ItemReport(id=item.id, type=item.type or UNTYPED, status=item.status, source=item.source,
                     target=item.target, error=item.error,
                     image=str(item.photo) if item.photo else None,
                     output=str(item.edited) if item.edited else None)
    if item.status != "ok":
        return out
    photo, edited = item.photo, item.edited
    if photo is None or edited is None or not photo.is_file() or not edited.is_file():
        out.error = f"missing image file ({photo if not (photo and photo.is_file()) else edited})"
        out.metrics.update(item.metrics)
        logger.warning("report: %s: %s", item.id, out.error)
        return out
    source, edit = load_image(photo), load_image(edited)
    h, w = edit.shape[-2:]
    if source.shape[-2:] != edit.shape[-2:]:
        source = torch.nn.functional.interpolate(source, size=(h, w), mode="bilinear", align_corners=False,
                                                 antialias=True).clamp(0, 1)
    mask = None
    if item.mask is not None and item.mask.is_file():
        mask = _load_mask(item.mask, h, w)
    elif item.mask_box is not None:
        mask = box_mask(item.mask_box, h, w)
    measured = image_metrics.image_metrics(source, edit, mask, lpips_module)
    out.metrics = {k: v for k, v in measured.items() if v is not None}
    out.metrics.update({k: v for k, v in item.metrics.items() if k not in out.metrics})
    diff = plots.difference_map(source, edit)[0]
    out.images = {"source": source[0], "edit": edit[0],
                  "diff": plots.colormap(diff / max(float(diff.max()), 1e-6))}
    return out


# --------------------------------------------------------------------------- statistics
def stats(values: Sequence[float | None]) -> dict[str, float | int]:
    """mean, population std (ddof 0) and count of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    arr = np.asarray(finite, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": len(finite)}


def _ordered_names(items: Sequence[ItemReport]) -> list[str]:
    seen: dict[str, None] = {}
    for it in items:
        for k in it.metrics:
            seen.setdefault(k, None)
    rank = {f"{p}{m}": i for i, (p, m) in enumerate((p, m) for p in ("", "bg_") for m in MEASURED)}
    return sorted(seen, key=lambda k: (rank.get(k, len(rank)), k))


def _thumbnail(image: torch.Tensor, size: int) -> Image.Image:
    im = plots.to_pil(image)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def build_report(items: Iterable[ReportItem], lpips_module: torch.nn.Module | None = None,
                 thumb_dir: Path | None = None, thumb_size: int = THUMB_SIZE, label: str = "") -> Report:
    """Measure every item; with ``thumb_dir``, write its thumbnails there as it goes and keep
    only their paths (relative to ``thumb_dir``'s parent), not the images."""
    reported: list[ItemReport] = []
    if thumb_dir is not None:
        thumb_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        it = measure_item(item, lpips_module)
        if thumb_dir is not None and it.images:
            stem = f"{len(reported):06d}"
            for kind, image in it.images.items():
                name = f"{stem}_{kind}.jpg"
                _thumbnail(image, thumb_size).save(thumb_dir / name, format="JPEG", quality=85)
                it.thumbs[kind] = f"{thumb_dir.name}/{name}"
            it.images = {}
        reported.append(it)
    names = _ordered_names(reported)
    by_type: dict[str, dict[str, dict[str, float | int]]] = {}
    for t in dict.fromkeys(it.type for it in reported):
        group = [it for it in reported if it.type == t]
        by_type[t] = {n: stats([it.metrics.get(n) for it in group]) for n in names}
    overall = {n: stats([it.metrics.get(n) for it in reported]) for n in names}
    return Report(reported, names, by_type, overall, label)


# --------------------------------------------------------------------------- writing
def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def report_dict(report: Report) -> dict[str, Any]:
    def clean(d: dict[str, dict[str, float | int]]) -> dict[str, dict[str, Any]]:
        return {n: {k: _json_value(v) for k, v in s.items()} for n, s in d.items()}

    return {
        "schema": SCHEMA,
        "results": report.label,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": report.metric_names,
        "items": [{"id": it.id, "type": it.type, "status": it.status, "source": it.source,
                   "target": it.target, "image": it.image, "output": it.output, "error": it.error,
                   "metrics": {n: _json_value(it.metrics.get(n)) for n in report.metric_names}}
                  for it in report.items],
        "by_type": {t: clean(s) for t, s in report.by_type.items()},
        "overall": clean(report.overall),
    }


def write_csv(report: Report, path: Path) -> None:
    """One row per item; empty cell = not measured. Floats written with repr (round-trip exact)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "type", "status", "source", "target", "error", *report.metric_names])
        for it in report.items:
            vals = [it.metrics.get(n) for n in report.metric_names]
            writer.writerow([it.id, it.type, it.status, it.source, it.target, it.error or "",
                             *["" if v is None or not math.isfinite(v) else repr(float(v)) for v in vals]])


def _data_uri(image: torch.Tensor, size: int) -> str:
    buf = io.BytesIO()
    _thumbnail(image, size).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "&ndash;"
    return f"{v:.4g}"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}img{display:block}td.img{padding:2px}
.failed{background:#fde8e8}.small{color:#666;font-size:.9em}"""


def _type_row(name: str, stats_by_metric: dict[str, dict[str, float | int]], names: list[str]) -> str:
    esc = html.escape
    n = max((v["n"] for v in stats_by_metric.values()), default=0)
    cells = "".join(
        f"<td data-metric='{esc(m)}' data-mean='{_num(s['mean'])}' data-std='{_num(s['std'])}'>"
        f"{_num(s['mean'])} &plusmn; {_num(s['std'])}</td>"
        for m, s in ((m, stats_by_metric[m]) for m in names))
    return f"<tr data-type='{esc(name)}'><td class='l'>{esc(name)}</td><td>{n}</td>{cells}</tr>"


def _item_row(it: ItemReport, names: list[str], thumb_size: int) -> str:
    esc = html.escape

    def picture(kind: str) -> str:
        if kind in it.thumbs:
            return f"<td class='img'><img alt='{kind}' loading='lazy' src='{esc(it.thumbs[kind])}'></td>"
        if kind in it.images:
            return f"<td class='img'><img alt='{kind}' src='{_data_uri(it.images[kind], thumb_size)}'></td>"
        return "<td></td>"

    imgs = "".join(picture(k) for k in ("source", "edit", "diff"))
    note = f"<br><span class='small'>{esc(it.status)}: {esc(str(it.error))}</span>" if it.error else ""
    cells = "".join(f"<td>{_num(it.metrics.get(m))}</td>" for m in names)
    cls = "" if it.status == "ok" and not it.error else " class='failed'"
    return (f"<tr{cls} data-id='{esc(it.id)}'><td class='l'>{esc(it.id)}</td>"
            f"<td class='l'>{esc(it.type)}</td>"
            f"<td class='l'>{esc(it.source)} &rarr; {esc(it.target)}{note}</td>{imgs}{cells}</tr>")


def write_html(report: Report, path: Path, thumb_size: int = THUMB_SIZE) -> None:
    """One offline page: per-type mean &plusmn; std, then every item with thumbnails and metrics."""
    esc = html.escape
    names = report.metric_names
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PSG edit report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>PSG edit report</h1>",
             f"<p class='small'>results: {esc(report.label)} &middot; {len(report.items)} items &middot; "
             "mean &plusmn; std (population) per edit type; "
             "bg_ = background only (outside the edit mask)</p>",
             "<h2>By edit type</h2>",
             f"<table id='by-type'><tr><th class='l'>type</th><th>n</th>{head}</tr>"]
    parts += [_type_row(t, s, names) for t, s in [*report.by_type.items(), ("all", report.overall)]]
    parts.append("</table><h2>Items</h2>")
    parts.append("<table id='items'><tr><th class='l'>id</th><th class='l'>type</th>"
                 "<th class='l'>prompts</th>"
                 f"<th>source</th><th>edit</th><th>|difference|</th>{head}</tr>")
    parts += [_item_row(it, names, thumb_size) for it in report.items]
    parts.append("</table></body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(items: Iterable[ReportItem], out_dir: str | Path, *,
                 lpips_module: torch.nn.Module | None = None, thumb_size: int = THUMB_SIZE,
                 thumbnails: str = "files", label: str = "") -> dict[str, Path]:
    """Measure and write report.csv, report.json and report.html (thumbnails as files in
    ``thumbs/``, or ``thumbnails="inline"`` data URIs); returns their paths. ``items`` may be a
    generator: each is measured as it comes."""
    if thumbnails not in ("files", "inline"):
        raise ValueError(f"report: thumbnails must be 'files' or 'inline', got {thumbnails!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thumb_dir = out / "thumbs" if thumbnails == "files" else None
    report = build_report(items, lpips_module, thumb_dir, thumb_size, label)
    paths = {"csv": out / "report.csv", "json": out / "report.json", "html": out / "report.html"}
    write_csv(report, paths["csv"])
    paths["json"].write_text(json.dumps(report_dict(report), indent=2) + "\n", encoding="utf-8")
    write_html(report, paths["html"], thumb_size)
    logger.info("report: %d items -> %s", len(report.items), out)
    return paths
