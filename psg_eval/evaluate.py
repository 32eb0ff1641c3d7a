"""``python -m psg_eval``: score edited PIE-Bench outputs and print PnPInversion's table.

Reads ``DATA/mapping_file.json`` + ``DATA/annotation_images/`` and, per method,
``OUTPUT/<method>/annotation_images/<image_path>`` (non-square outputs cropped to their last
512x512), computes the selected metrics (``--metrics pnp`` = PnPInversion's default set,
``pnp-all`` = every metric of their evaluate.py, ``pack`` = this pack's background metrics, or
single names), and writes into ``--out-dir``:

* ``evaluation_result.csv``: one row per image, columns ``<method>|<metric>``, the layout of
  PnPInversion's own result file;
* ``summary.csv`` and ``summary.md``: means per method, overall and per editing type, with the
  number of images scored and the seconds per edit the runner recorded
  (``OUTPUT/<method>/psg_batch/results.json``), the table printed to stdout.

Mean = average over the images where the metric is defined (an empty part gives NaN).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import models as model_files
from . import pie_bench as pie
from .pie_metrics import METRIC_SETS, PACK_METRICS, PNP_ALL, EditPair, needs, score

logger = logging.getLogger("psg_eval")
OVERALL = "overall"

PAPER_COLUMNS: dict[str, tuple[str, float, str]] = {
    "structure_distance": ("Structure distance ×10³ ↓", 1e3, "{:.2f}"),
    "psnr_unedit_part": ("BG PSNR ↑", 1.0, "{:.2f}"),
    "lpips_unedit_part": ("BG LPIPS ×10³ ↓", 1e3, "{:.2f}"),
    "mse_unedit_part": ("BG MSE ×10⁴ ↓", 1e4, "{:.2f}"),
    "ssim_unedit_part": ("BG SSIM ×10² ↑", 1e2, "{:.2f}"),
    "clip_similarity_target_image": ("CLIP whole ↑", 1.0, "{:.2f}"),
    "clip_similarity_target_image_edit_part": ("CLIP edited ↑", 1.0, "{:.2f}"),
}
"""PnPInversion's paper table: metric -> (column title, display scale, format)."""


@dataclass
class MethodResult:
    method: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> metric -> value
    seconds: dict[str, float] = field(default_factory=dict)  # key -> seconds per edit (runner)
    missing: list[str] = field(default_factory=list)


def expand_metrics(requested: Sequence[str]) -> list[str]:
    names: list[str] = []
    for r in requested:
        for name in METRIC_SETS.get(r, (r,)):
            if name not in names:
                names.append(name)
    needs(names)  # unknown names fail here, before any model is loaded
    return names


def discover_methods(output_root: Path) -> list[str]:
    if not output_root.is_dir():
        raise FileNotFoundError(f"no output folder {output_root} (run benchmarks/pie_bench.py first).")
    found = sorted(p.name for p in output_root.iterdir() if (p / pie.IMAGES_DIR).is_dir())
    if not found:
        raise FileNotFoundError(f"{output_root} holds no <method>/{pie.IMAGES_DIR}/ folder.")
    return found


def runner_seconds(output_root: Path, method: str) -> dict[str, float]:
    """Seconds per edit recorded by the runner, by PIE-Bench key (empty when not run by it)."""
    path = pie.method_dir(output_root, method) / pie.RUN_RECORD
    if not path.is_file():
        return {}
    try:
        items = json.loads(path.read_text(encoding="utf-8")).get("items", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        logger.warning("ignoring unreadable %s", path)
        return {}
    return {str(r["id"]): float(r["elapsed_s"]) for r in items
            if isinstance(r, dict) and r.get("status") == "ok"
            and isinstance(r.get("elapsed_s"), (int, float))}


def evaluate(data_dir: Path, output_root: Path, methods: list[str], metric_names: list[str], models,
             types: list[str] | None = None,
             limit: int | None = None) -> tuple[list[pie.PieItem], list[MethodResult]]:
    """Score every (method, item) pair whose edited image exists."""
    items = pie.load_mapping(data_dir, types)[:limit]
    results = [MethodResult(m, seconds=runner_seconds(output_root, m)) for m in methods]
    for n, item in enumerate(items, 1):
        photo = pie.read_rgb(pie.photo_path(data_dir, item))
        mask = pie.decode_mask(item.rle)
        if photo.shape[:2] != mask.shape:
            raise ValueError(f"{item.key}: photo {pie.photo_path(data_dir, item)} is "
                             f"{photo.shape[1]}x{photo.shape[0]}, PIE-Bench photos and masks are "
                             f"{pie.PIE_SIZE}x{pie.PIE_SIZE}.")
        for result in results:
            path = pie.edited_path(output_root, result.method, item)
            if not path.is_file():
                result.missing.append(item.key)
                continue
            edit = pie.read_edit(path)
            if edit.shape != photo.shape:
                raise ValueError(f"{path}: the edit is {edit.shape[1]}x{edit.shape[0]} after cropping, "
                                 f"the photo {photo.shape[1]}x{photo.shape[0]}; write the edit at the "
                                 "photo's size.")
            pair = EditPair(photo, edit, mask, pie.strip_brackets(item.source_prompt),
                            pie.strip_brackets(item.target_prompt))
            result.values[item.key] = score(pair, models, metric_names)
        logger.info("[%d/%d] %s scored", n, len(items), item.key)
    for result in results:
        if result.missing:
            logger.warning("%s: %d of %d edited images missing (not scored), e.g. %s", result.method,
                           len(result.missing), len(items), result.missing[0])
    return items, results


# --------------------------------------------------------------------------- summaries
def groups(items: list[pie.PieItem]) -> dict[str, list[str]]:
    """'overall' and every editing type present -> the keys in it."""
    out = {OVERALL: [it.key for it in items]}
    for type_id in sorted({it.editing_type for it in items}, key=lambda t: (len(t), t)):
        name = pie.EDITING_TYPES.get(type_id, f"type {type_id}")
        out[name] = [it.key for it in items if it.editing_type == type_id]
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(items: list[pie.PieItem], results: list[MethodResult],
              metric_names: list[str]) -> list[dict[str, object]]:
    """Rows {method, group, n, seconds_per_edit, <metric>: mean} per method and group."""
    rows = []
    for group, keys in groups(items).items():
        for r in results:
            scored = [k for k in keys if k in r.values]
            seconds = _mean([r.seconds[k] for k in scored if k in r.seconds])
            row: dict[str, object] = {"method": r.method, "group": group, "n": len(scored),
                                      "seconds_per_edit": seconds}
            for name in metric_names:
                row[name] = _mean([r.values[k][name] for k in scored])
            rows.append(row)
    return rows


def _cell(value: object, scale: float = 1.0, fmt: str = "{:.4g}") -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    return fmt.format(value * scale)


def markdown(rows: list[dict[str, object]], metric_names: list[str]) -> str:
    """PnPInversion's table (their units) per group, then any other metric raw."""
    columns = [(m, *PAPER_COLUMNS[m]) for m in PAPER_COLUMNS if m in metric_names]
    columns += [(m, m, 1.0, "{:.4g}") for m in metric_names if m not in PAPER_COLUMNS]
    header = "| method | " + " | ".join(c[1] for c in columns) + " | s / edit | n |"
    rule = "|---" * (len(columns) + 3) + "|"
    parts = []
    for group in dict.fromkeys(r["group"] for r in rows):
        lines = [f"### {group}", "", header, rule]
        for r in (r for r in rows if r["group"] == group):
            cells = [_cell(r[m], scale, fmt) for m, _, scale, fmt in columns]
            seconds = _cell(r["seconds_per_edit"], 1, "{:.1f}")
            lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {seconds} | {r['n']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_outputs(out_dir: Path, items: list[pie.PieItem], results: list[MethodResult],
                  metric_names: list[str], rows: list[dict[str, object]], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "evaluation_result.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_id"] + [f"{r.method}|{m}" for r in results for m in metric_names])
        for item in items:
            if not any(item.key in r.values for r in results):
                continue
            w.writerow([item.key] + [repr_value(r.values.get(item.key, {}).get(m)) for r in results
                                     for m in metric_names])
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["method", "group", "n", "seconds_per_edit", *metric_names])
        w.writeheader()
        for r in rows:
            w.writerow({k: repr_value(v) if isinstance(v, float) else v for k, v in r.items()})
    (out_dir / "summary.md").write_text(table, encoding="utf-8")


def repr_value(value: float | None) -> str:
    return "" if value is None else ("nan" if math.isnan(value) else repr(float(value)))


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m psg_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="PIE-Bench data folder (mapping_file.json, annotation_images/)")
    p.add_argument("--output", type=Path, default=Path("output"),
                   help="folder of <method>/annotation_images/ (default output)")
    p.add_argument("--methods", nargs="+", help="method folders to score (default: every one in --output)")
    p.add_argument("--metrics", nargs="+", default=["pnp"],
                   help=f"metric sets ({', '.join(METRIC_SETS)}) or names: "
                        f"{', '.join(PNP_ALL + PACK_METRICS)}")
    p.add_argument("--types", nargs="+", help="editing type ids 0-9 (default all)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--models", type=Path, default=Path("models"),
                   help="models folder (e.g. ComfyUI/models): lpips/, dino/, "
                        "clip_score/clip-vit-large-patch14/")
    p.add_argument("--lpips-dir", type=Path,
                   help="folder with squeezenet1_1-b8a52dc0.pth (and alexnet for 'pack')")
    p.add_argument("--dino", type=Path, help="dino_vitbase8_pretrain.pth or its folder")
    p.add_argument("--clip", type=Path, help="transformers folder of openai/clip-vit-large-patch14")
    p.add_argument("--dino-antialias", action="store_true",
                   help="antialias DINO's resize to 224 (torchvision >= 0.17 default; "
                        "PnPInversion's era: off)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--out-dir", type=Path,
                   help="where the CSVs and summary.md go (default OUTPUT/evaluation)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        metric_names = expand_metrics(args.metrics)
        methods = args.methods or discover_methods(args.output)
        paths = model_files.ModelPaths.under(args.models, args.lpips_dir, args.dino, args.clip)
        models = model_files.load(needs(metric_names), paths, device, args.dino_antialias)
        started = time.perf_counter()
        items, results = evaluate(args.data, args.output, methods, metric_names, models, args.types,
                                  args.limit)
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"psg_eval: error: {err}\n")
        return 2
    rows = summarise(items, results, metric_names)
    table = markdown(rows, metric_names)
    out_dir = args.out_dir or args.output / "evaluation"
    write_outputs(out_dir, items, results, metric_names, rows, table)
    print(table)
    scored = sum(len(r.values) for r in results)
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"scored {scored} edit(s) of {len(methods)} method(s) in {elapsed:.1f} s -> {out_dir}\n")
    return 0
