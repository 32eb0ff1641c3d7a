"""Guidance-decoder quality check: does a cheap guidance decoder keep the edit as good?

For each edit of the shipped example dataset ``examples/edits.json`` (or ``--dataset``) the shipped
``psg_edit`` workflow runs four times through the CLI's in-process ComfyUI (``psg_cli``: the same
graph a user runs):

    no perceptual guidance   PSG Edit scale 0
    full-VAE guidance        LPIPS gradient through the checkpoint's VAE decoder
    TAESD guidance           ... through a TAESD loaded by VAELoader (``--taesd``)
    1/2-res guidance         full VAE, x0 decoded and compared at half resolution

The final image is always decoded by the full VAE. Measured on it: background LPIPS / PSNR /
SSIM to the photo (outside the edit's mask_box, PIE-Bench convention, via ``psg_eval.report``),
CLIPScore to the target prompt, and seconds per edit. A markdown table goes to stdout.

Real weights (the only way the numbers mean anything; ComfyUI's Python or this repo's .venv):
    python -m benchmarks.quality_check --comfy-root ~/ComfyUI \\
        --ckpt v1-5-pruned-emaonly.safetensors --taesd taesd --limit 7
  (taesd_encoder/decoder.safetensors in models/vae_approx, the AlexNet backbone in models/lpips, a
  transformers CLIP folder in models/clip_score or given with --clip DIR.)

Stand-in (random-weight tiny model, TAESD, AlexNet and CLIP; checks the pipeline runs, the
numbers are MEANINGLESS):
    .venv/bin/python -m benchmarks.quality_check --stand-in --limit 1 --steps 2 --size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from psg_cli import roles, workflow
from psg_cli.dataset import BatchItem, load_dataset, safe_stem
from psg_cli.edit import EditRequest, run_edit
from psg_cli.errors import CliError
from psg_eval.report import ReportItem, measure_item

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("quality_check")
DEFAULT_DATASET = ROOT / "examples" / "edits.json"
EDIT_NODE = "PSG Edit"
STAND_IN_BANNER = """\
################################################################################
#  STAND-IN RUN: random-weight tiny model, TAESD, LPIPS backbone and CLIP.     #
#  It checks that the pipeline runs end to end; its NUMBERS ARE MEANINGLESS.   #
#  Run with real weights (--comfy-root, --ckpt, --taesd, --clip) to compare.   #
################################################################################"""


@dataclass(frozen=True)
class Variant:
    name: str
    guidance_vae: str | None  # VAELoader name; None = the full VAE (the loader is dropped)
    sets: tuple[str, ...] = ()


def variants(taesd: str) -> list[Variant]:
    return [
        Variant("no perceptual guidance", None, (f"{EDIT_NODE}.scale=0",)),
        Variant("full-VAE guidance", None),
        Variant(f"TAESD guidance ({taesd})", taesd),
        Variant("1/2-res guidance (full VAE)", None, (f"{EDIT_NODE}.guidance_resolution=1/2",)),
    ]


@dataclass
class Row:
    variant: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        self.values.setdefault(name, []).append(math.nan if value is None else float(value))

    def mean(self, name: str) -> float:
        vals = self.values.get(name, [])
        return float(np.mean(vals)) if vals else math.nan


COLUMNS = (("bg_lpips", "bg LPIPS ↓", "{:.4f}"), ("bg_psnr", "bg PSNR dB ↑", "{:.2f}"),
           ("bg_ssim", "bg SSIM ↑", "{:.4f}"), ("clip_score", "CLIPScore ↑", "{:.2f}"),
           ("seconds", "s / edit", "{:.1f}"))


def markdown_table(rows: list[Row], n_edits: int) -> str:
    head = "| variant | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = [fmt.format(row.mean(key)) if math.isfinite(row.mean(key)) else "n/a"
                 for key, _, fmt in COLUMNS]
        lines.append(f"| {row.variant} | " + " | ".join(cells) + " |")
    lines.append(f"\nmeans over {n_edits} edit(s); bg = outside the edit's mask_box (whole image for a "
                 "whole-image edit); the final image is always decoded by the full VAE; seconds after one "
                 "untimed warm-up edit")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ inputs
def square_photo(src: Path, size: int, dest: Path) -> Path:
    """Centre crop + resize to ``size`` (a multiple of 8: VAE latents), so every variant sees one input."""
    with Image.open(src) as img:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS).save(dest)
    return dest


def stand_in_base(base: Path) -> Path:
    """A ComfyUI ``--base-directory`` with this pack and the test nodes (the tiny checkpoint) in
    its custom_nodes; the model files follow once ComfyUI is importable (:func:`stand_in_models`)."""
    from psg_testing import host

    host.populate_custom_nodes(base / "custom_nodes")
    return base


def stand_in_models(base: Path) -> Path:
    """Random-weight TAESD, AlexNet and CLIP where that ComfyUI looks; returns the CLIP folder."""
    from psg_testing.metric_models import save_random_alexnet, save_tiny_clip
    from psg_testing.taesd_files import write_random_taesd

    write_random_taesd(base / "models" / "vae_approx", tuple(roles.TAESD_FOR_FAMILY.values()))
    save_random_alexnet(base / "models" / "lpips")
    return save_tiny_clip(base / "models" / "clip_score" / "tiny-random-clip")


def stand_in_workflow(name: str, dest: Path) -> Path:
    from psg_testing.cli_support import swap_checkpoint_loader, write_json

    return write_json(dest, swap_checkpoint_loader(workflow.load_workflow(name), family="sd15"))


def edited_region(item: BatchItem) -> list[float] | None:
    """The edit's mask_box, or None when it covers the whole photo (a whole-image edit has no
    background: it is measured on the whole image and its LPIPS guidance is unmasked)."""
    box = item.request.mask_box
    if item.request.mask is not None:
        box = mask_bounding_box(item.request.mask)
        logger.info("%s: mask image -> its bounding box %s (photos are cropped square here)", item.id, box)
    return None if box is None or list(box) == [0.0, 0.0, 1.0, 1.0] else box


def mask_bounding_box(mask: Path) -> list[float] | None:
    """[x0, y0, x1, y1] fractions around the white (edited) pixels of a grey mask image."""
    with Image.open(mask) as img:
        grey = np.asarray(img.convert("L")) > 127
    if not grey.any():
        return None
    rows, cols = np.flatnonzero(grey.any(axis=1)), np.flatnonzero(grey.any(axis=0))
    h, w = grey.shape
    return [cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h]


def load_metric_models(clip: Path | None) -> tuple[Any, Any]:
    """(LPIPS-alex from ComfyUI's lpips folders, CLIP scorer or None); after ComfyUI has booted."""
    import folder_paths

    from psg_core.lpips_weights import load_lpips
    from psg_eval.clip_score import load_clip_scorer

    def folders(kind: str) -> list[str]:
        return folder_paths.get_folder_paths(kind) if kind in folder_paths.folder_names_and_paths else []

    lpips_module = load_lpips("alex", folders("lpips"))
    if clip is None:  # the one CLIP model in models/clip_score, as the PSG CLIPScore node offers it
        found = sorted({d for f in folders("clip_score") if Path(f).is_dir()
                        for d in Path(f).iterdir() if (d / "config.json").is_file()})
        if len(found) != 1:
            logger.warning("CLIPScore column n/a: give --clip DIR (found %d CLIP models in "
                           "models/clip_score)",
                           len(found))
            return lpips_module, None
        clip = found[0]
    return lpips_module, load_clip_scorer(clip)


def clip_score(scorer: Any, image: Path, text: str) -> float | None:
    if scorer is None:
        return None
    with Image.open(image) as img:
        pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return float(scorer.score(pixels.permute(2, 0, 1)[None], text)[0])


# ------------------------------------------------------------------------------ run
def run(args: argparse.Namespace, work: Path) -> list[Row]:
    from psg_cli.inprocess_backend import InProcessBackend

    comfy_root = args.comfy_root.expanduser().resolve()
    base, clip, wf = args.base_directory, args.clip, args.workflow
    if args.stand_in:
        base = stand_in_base(work / "comfy_base")
    backend = InProcessBackend(comfy_root, base, args.cpu)
    if args.stand_in:  # before the first object_info: VAELoader lists vae_approx then
        clip = stand_in_models(base)
        wf = str(stand_in_workflow(args.workflow, work / "stand_in_workflow.json"))
    lpips_module, scorer = load_metric_models(clip)

    items: list[BatchItem] = load_dataset(args.dataset, work / "inputs")[: args.limit]
    photos = {it.id: square_photo(it.request.image, args.size,
                                  work / "inputs" / f"{safe_stem(it.id)}_{args.size}.png")
              for it in items}
    fast = [f"{EDIT_NODE}.inner_steps={args.inner_steps}"] if args.inner_steps is not None else []
    rows = []
    boxes = {it.id: edited_region(it) for it in items}

    def request(it: BatchItem, variant: Variant, steps: int) -> EditRequest:
        return EditRequest(image=photos[it.id], source=it.request.source, target=it.request.target,
                           mask_box=boxes[it.id], ckpt=None if args.stand_in else args.ckpt, seed=args.seed,
                           guidance_vae=variant.guidance_vae or roles.NO_GUIDANCE_VAE,
                           sets=[*fast, f"{EDIT_NODE}.steps={steps}", *variant.sets], workflow=wf)

    all_variants = variants(args.taesd)
    # untimed: loads checkpoint, TAESD and LPIPS once (ComfyUI keeps them for the timed runs)
    run_edit(backend, request(items[0], all_variants[2], min(2, args.steps)), work / "warmup", "warmup",
             progress=False)
    for variant in all_variants:
        row = Row(variant.name)
        for it in items:
            out = work / "out" / safe_stem(variant.name)
            stem = safe_stem(it.id)
            started = time.perf_counter()
            record = run_edit(backend, request(it, variant, args.steps), out, stem, progress=False)
            row.add("seconds", time.perf_counter() - started)
            edit = ReportItem(id=it.id, photo=photos[it.id], edited=out / record["output"],
                              mask_box=boxes[it.id])
            measured = measure_item(edit, lpips_module)
            if measured.error:
                raise RuntimeError(f"{variant.name} / {it.id}: {measured.error}")
            for key in ("bg_lpips", "bg_psnr", "bg_ssim"):
                row.add(key, measured.metrics.get(key, measured.metrics.get(key.removeprefix("bg_"))))
            row.add("clip_score", clip_score(scorer, out / record["output"], it.request.target))
            logger.info("%s / %s: %s", variant.name, it.id, {k: v[-1] for k, v in row.values.items()})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy-root", type=Path, default=Path("~/ComfyUI"),
                        help="ComfyUI folder (default ~/ComfyUI)")
    parser.add_argument("--base-directory", type=Path, help="ComfyUI --base-directory (models, input, "
                                                            "output)")
    parser.add_argument("--ckpt", default=roles.DEFAULT_CHECKPOINT, help="checkpoint in models/checkpoints")
    parser.add_argument("--taesd", default="taesd", help="VAELoader name of the TAESD (models/vae_approx)")
    parser.add_argument("--clip", type=Path,
                        help="CLIP model folder (transformers) for CLIPScore (default: the one in "
                             "models/clip_score)")
    parser.add_argument("--workflow", default="psg_edit", help="shipped API workflow with a 'PSG Edit' node")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=None, help="first N edits only")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="null-text iterations (workflow default 10)")
    parser.add_argument("--size", type=int, default=512, help="photos are centre-cropped to size x size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="force CPU")
    parser.add_argument("--stand-in", action="store_true",
                        help="random-weight tiny model / TAESD / LPIPS / CLIP: tests the pipeline, numbers "
                             "meaningless")
    parser.add_argument("--keep", type=Path, help="keep images and settings here (default: a temporary "
                                                  "folder)")
    parser.add_argument("--json", type=Path, help="also write the per-variant means here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    if args.stand_in:
        args.cpu = True
        torch.set_num_threads(1)  # tiny models: more threads only spin against each other on a busy machine
        if args.inner_steps is None:
            args.inner_steps = 2
        print(STAND_IN_BANNER, flush=True)

    with tempfile.TemporaryDirectory(prefix="psg_quality_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            rows = run(args, work)
        except (CliError, FileNotFoundError) as err:  # missing checkpoint / TAESD / LPIPS / CLIP files
            sys.stderr.write(f"quality_check: error: {err}\n")
            return 2
    n_edits = len(next(iter(rows[0].values.values()), []))
    print(markdown_table(rows, n_edits))
    if args.json:
        means = {r.variant: {k: r.mean(k) for k, _, _ in COLUMNS} for r in rows}
        args.json.write_text(json.dumps(means, indent=2) + "\n", encoding="utf-8")
    if args.stand_in:
        print(STAND_IN_BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
