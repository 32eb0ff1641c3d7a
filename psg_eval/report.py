"""Batch report for ``edit-batch`` results: CSV + JSON + one self-contained offline HTML page.

Input (what ``psg_cli/batch.py`` writes, schema ``psg-edit-batch/1``; a bare list of items is
accepted too). Paths are relative to the results file's folder (absolute paths work).
Per item, the report reads:

=================  =========================================================================
``id``             required, unique label
``type``           edit type, groups the mean/std table (missing: ``"untyped"``)
``image``          source photo path (alias ``source_image``)
``output``         edited image path (alias ``edited_image``)
``mask``           optional mask image path, white = edited region (PIE-Bench convention)
``mask_box``       optional ``[x0, y0, x1, y1]`` fractions of width/height, the edited region
``status``         ``"ok"`` (default), ``"failed"`` or ``"pending"``; only ok items are measured
``source``         source prompt (shown), ``target`` edit prompt (shown), ``error`` (shown)
``metrics``        optional dict of numbers, nested dicts allowed (e.g. ComfyUI ui outputs
                   keyed by node title): every numeric leaf is reported, named by its last
                   key (prefixed by its parents where that name would clash)
=================  =========================================================================

The report measures each ok item itself from the image files: ``mse``, ``psnr``, ``ssim``
(and ``lpips`` when given an LPIPS module) on the whole image and, with a mask or mask_box,
the ``bg_`` background-only variants. When the edit's size differs from the photo's (VAE
sizes are multiples of 8), the photo is resized to the edit first. Per edit type and overall:
mean and population standard deviation (ddof 0) over the items that have the metric.

The input may also be the batch journal (``journal.jsonl``, one JSON line per state change,
``record`` holding the item): the last record of each item counts, so a report can be made of
a batch still running or of several shards' journals together.

Outputs in ``out_dir``: ``report.csv`` (one row per item), ``report.json`` (items, per-type
and overall statistics) and ``report.html``. Thumbnails are JPEG files in ``thumbs/`` linked
from the page (items are measured one at a time and their images dropped, so 10,000 items fit
in memory and the page opens); ``thumbnails="inline"`` embeds them as data URIs instead (one
self-contained file, for small batches).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import metrics as M
from . import plots

logger = logging.getLogger(__name__)

SCHEMA = "psg-report/1"
UNTYPED = "untyped"
THUMB_SIZE = 192
MEASURED = ("psnr", "ssim", "lpips", "mse")


@dataclass
class ItemReport:
    """One result item as reported: what it was, its metrics and (for HTML) its images."""

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
    results_path: str


# --------------------------------------------------------------------------- reading
def read_journal(path: Path) -> list[dict[str, Any]]:
    """The last ``record`` of each item in a batch journal (JSON lines; a torn line is skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("record"), dict) and entry["record"].get("id"):
                latest[str(entry["record"]["id"])] = entry["record"]
    return list(latest.values())


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """The item records of a results file (or journal) and the folder their paths are relative to."""
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"report: no journal at {path} (run `edit-batch` first).")
        return read_journal(path), path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"report: no results file at {path} (run `edit-batch` first).") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"report: {path} is not valid JSON ({err}).") from None
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise ValueError(f"report: {path} must hold a list of item records or {{\"items\": [...]}} "
                         "(the psg-edit-batch/1 results schema).")
    missing = [i for i, r in enumerate(items) if not r.get("id")]
    if missing:
        raise ValueError(f"report: item(s) at position {missing[:5]} in {path} have no 'id'.")
    return items, path.parent


def flatten_metrics(value: Any) -> dict[str, float]:
    """Numeric leaves of a nested dict/list, named by their last key (parents added on a clash)."""
    leaves: list[tuple[tuple[str, ...], float]] = []

    def walk(v: Any, keys: tuple[str, ...]) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            leaves.append((keys, float(v)))
        elif isinstance(v, Mapping):
            for k, sub in v.items():
                walk(sub, keys + (str(k),))
        elif isinstance(v, (list, tuple)):
            if len(v) == 1:
                walk(v[0], keys)
            else:
                for i, sub in enumerate(v):
                    walk(sub, keys + (str(i),))

    walk(value, ())
    out: dict[str, float] = {}
    names = [k[-1] if k else "value" for k, _ in leaves]
    for (keys, v), name in zip(leaves, names, strict=True):
        if names.count(name) > 1:
            name = ".".join(keys) or "value"
        out[name] = v
    return out


def _load_image(path: Path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


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


def _resolve(base: Path, value: Any) -> Path | None:
    if not value:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def measure_item(record: dict[str, Any], base: Path, lpips_module: object | None = None) -> ItemReport:
    """Metrics of one results record (see the module docstring for the fields read)."""
    item = ItemReport(id=str(record["id"]), type=str(record.get("type") or UNTYPED),
                      status=str(record.get("status") or "ok"), source=str(record.get("source") or ""),
                      target=str(record.get("target") or ""), error=record.get("error"))
    src_path = _resolve(base, record.get("image") or record.get("source_image"))
    out_path = _resolve(base, record.get("output") or record.get("edited_image"))
    item.image, item.output = (str(p) if p else None for p in (src_path, out_path))
    if item.status != "ok":
        return item
    provided = flatten_metrics(record.get("metrics") or {})
    if src_path is None or out_path is None or not src_path.is_file() or not out_path.is_file():
        item.error = f"missing image file ({src_path if not (src_path and src_path.is_file()) else out_path})"
        item.metrics.update(provided)
        logger.warning("report: %s: %s", item.id, item.error)
        return item
    source, edit = _load_image(src_path), _load_image(out_path)
    h, w = edit.shape[-2:]
    if source.shape[-2:] != edit.shape[-2:]:
        source = torch.nn.functional.interpolate(source, size=(h, w), mode="bilinear", align_corners=False,
                                                 antialias=True).clamp(0, 1)
    mask = None
    mask_path = _resolve(base, record.get("mask"))
    if mask_path is not None and mask_path.is_file():
        mask = _load_mask(mask_path, h, w)
    elif record.get("mask_box") is not None:
        mask = box_mask(record["mask_box"], h, w)
    item.metrics = M.image_metrics(source, edit, mask, lpips_module)
    if lpips_module is None:
        item.metrics = {k: v for k, v in item.metrics.items() if not k.endswith("lpips")}
    item.metrics.update({k: v for k, v in provided.items() if k not in item.metrics})
    diff = plots.difference_map(source, edit)[0]
    item.images = {"source": source[0], "edit": edit[0], "diff": plots.colormap(diff / max(float(diff.max()), 1e-6))}
    return item


# --------------------------------------------------------------------------- statistics
def stats(values: Sequence[float]) -> dict[str, float | int]:
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


def _thumb_file(image: torch.Tensor, path: Path, size: int) -> None:
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    im.save(path, format="JPEG", quality=85)


def build_report(results_path: str | Path | Sequence[str | Path], lpips_module: object | None = None,
                 thumb_dir: Path | None = None, thumb_size: int = THUMB_SIZE) -> Report:
    """Measure every item; with ``thumb_dir``, write its thumbnails there as it goes and keep
    only their paths (relative to ``thumb_dir``'s parent), not the images."""
    paths = [results_path] if isinstance(results_path, (str, Path)) else list(results_path)
    items: list[ItemReport] = []
    if thumb_dir is not None:
        thumb_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        records, base = read_results(path)
        for record in records:
            it = measure_item(record, base, lpips_module)
            if thumb_dir is not None and it.images:
                stem = f"{len(items):06d}"
                for kind, image in it.images.items():
                    _thumb_file(image, thumb_dir / f"{stem}_{kind}.jpg", thumb_size)
                    it.thumbs[kind] = f"{thumb_dir.name}/{stem}_{kind}.jpg"
                it.images = {}
            items.append(it)
    names = _ordered_names(items)
    by_type: dict[str, dict[str, dict[str, float | int]]] = {}
    for t in dict.fromkeys(it.type for it in items):
        group = [it for it in items if it.type == t]
        by_type[t] = {n: stats([it.metrics.get(n) for it in group]) for n in names}
    overall = {n: stats([it.metrics.get(n) for it in items]) for n in names}
    return Report(items, names, by_type, overall, ", ".join(str(p) for p in paths))


# --------------------------------------------------------------------------- writing
def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def report_dict(report: Report) -> dict[str, Any]:
    def clean(d: dict[str, dict[str, float | int]]) -> dict[str, dict[str, Any]]:
        return {n: {k: _json_value(v) for k, v in s.items()} for n, s in d.items()}

    return {
        "schema": SCHEMA,
        "results": report.results_path,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": report.metric_names,
        "items": [{"id": it.id, "type": it.type, "status": it.status, "source": it.source, "target": it.target,
                   "image": it.image, "output": it.output, "error": it.error,
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


def _thumb(image: torch.Tensor, size: int) -> str:
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "&ndash;"
    return f"{v:.4g}"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}img{display:block}td.img{padding:2px}
.failed{background:#fde8e8}.small{color:#666;font-size:.9em}"""


def write_html(report: Report, path: Path, thumb_size: int = THUMB_SIZE) -> None:
    """One offline page: per-type mean &plusmn; std, then every item with thumbnails and metrics."""
    esc = html.escape
    names = report.metric_names
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PSG edit report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>PSG edit report</h1>",
             f"<p class='small'>results: {esc(report.results_path)} &middot; {len(report.items)} items &middot; "
             "mean &plusmn; std (population) per edit type; bg_ = background only (outside the edit mask)</p>",
             "<h2>By edit type</h2>",
             f"<table id='by-type'><tr><th class='l'>type</th><th>n</th>{head}</tr>"]
    rows = list(report.by_type.items()) + [("all", report.overall)]
    for t, s in rows:
        n = max((v["n"] for v in s.values()), default=0)
        cells = "".join(f"<td data-metric='{esc(m)}' data-mean='{_num(s[m]['mean'])}' data-std='{_num(s[m]['std'])}'>"
                        f"{_num(s[m]['mean'])} &plusmn; {_num(s[m]['std'])}</td>" for m in names)
        parts.append(f"<tr data-type='{esc(t)}'><td class='l'>{esc(t)}</td><td>{n}</td>{cells}</tr>")
    parts.append("</table><h2>Items</h2>")
    parts.append(f"<table id='items'><tr><th class='l'>id</th><th class='l'>type</th><th class='l'>prompts</th>"
                 f"<th>source</th><th>edit</th><th>|difference|</th>{head}</tr>")
    for it in report.items:
        imgs = "".join(
            f"<td class='img'><img alt='{k}' loading='lazy' src='{esc(it.thumbs[k])}'></td>" if k in it.thumbs
            else f"<td class='img'><img alt='{k}' src='{_thumb(it.images[k], thumb_size)}'></td>" if k in it.images
            else "<td></td>" for k in ("source", "edit", "diff"))
        note = f"<br><span class='small'>{esc(it.status)}: {esc(str(it.error))}</span>" if it.error else ""
        cells = "".join(f"<td>{_num(it.metrics.get(m))}</td>" for m in names)
        cls = "" if it.status == "ok" and not it.error else " class='failed'"
        parts.append(f"<tr{cls} data-id='{esc(it.id)}'><td class='l'>{esc(it.id)}</td><td class='l'>{esc(it.type)}</td>"
                     f"<td class='l'>{esc(it.source)} &rarr; {esc(it.target)}{note}</td>{imgs}{cells}</tr>")
    parts.append("</table></body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(results_path: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, *,
                 lpips_module: object | None = None, thumb_size: int = THUMB_SIZE,
                 thumbnails: str = "files") -> dict[str, Path]:
    """Measure and write report.csv, report.json and report.html (thumbnails as files in
    ``thumbs/``, or ``thumbnails="inline"`` data URIs); returns their paths."""
    if thumbnails not in ("files", "inline"):
        raise ValueError(f"report: thumbnails must be 'files' or 'inline', got {thumbnails!r}.")
    first = Path(results_path if isinstance(results_path, (str, Path)) else results_path[0])
    out = Path(out_dir) if out_dir is not None else first.parent
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results_path, lpips_module, out / "thumbs" if thumbnails == "files" else None,
                          thumb_size)
    paths = {"csv": out / "report.csv", "json": out / "report.json", "html": out / "report.html"}
    write_csv(report, paths["csv"])
    paths["json"].write_text(json.dumps(report_dict(report), indent=2) + "\n", encoding="utf-8")
    write_html(report, paths["html"], thumb_size)
    logger.info("report: %d items -> %s", len(report.items), out)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m psg_core.report RESULTS.json [--out DIR] [--lpips alex --lpips-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m psg_core.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+",
                        help="results JSON or journal.jsonl written by edit-batch (several: one report, "
                             "e.g. the journals of --shard runs)")
    parser.add_argument("--out", default=None, help="output folder (default: next to the results file)")
    parser.add_argument("--lpips", choices=("alex", "vgg", "squeeze"), default=None,
                        help="also measure LPIPS with this network (its backbone weights must be on disk)")
    parser.add_argument("--lpips-dir", action="append", default=[], help="folder holding the LPIPS backbone weights")
    parser.add_argument("--inline-thumbnails", action="store_true",
                        help="embed thumbnails in report.html (one file; for small batches) instead of thumbs/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = None
    if args.lpips:
        from .lpips_weights import load_lpips

        module = load_lpips(args.lpips, args.lpips_dir)
    try:
        paths = write_report(args.results, args.out, lpips_module=module,
                             thumbnails="inline" if args.inline_thumbnails else "files")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
