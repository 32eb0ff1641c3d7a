"""Run editing methods over PIE-Bench and write outputs where PnPInversion's evaluation reads them.

For every selected PIE-Bench image and method, the shipped ``psg_edit`` workflow (or
``--workflow``) runs through ``edit-batch``'s engine and workers (``--server URL`` once or several
times, e.g. one ComfyUI per GPU; ``--comfy-root`` in-process; ``--ray [ADDRESS|auto]`` with
``--comfy-root``: Ray actors across a cluster) and the edit is written to

    OUT/<method>/annotation_images/<image_path>

(saved by Pillow from the file name, as PnPInversion's runners save). Methods are
``<text guidance>[+psg[-mask]]``:

    ddim-cfg          DDIM inversion + plain CFG (PSG Edit text_optimization = none)
    null-text         null-text optimization         negative-prompt   negative-prompt inversion
    direct-offsets    direct-inversion offsets
    +psg              perceptual (LPIPS) guidance on (scale from the workflow or --psg-scale)
    +psg-mask         ... with PIE-Bench's mask given to it (1 = edited, free to change)

without a suffix the perceptual guidance is off (scale 0). Rerun the same command to resume:
edits the journal ``OUT/<method>/psg_batch/journal.jsonl`` holds with the same settings are
kept, changed settings redo them (``results.json`` next to it holds the records and timings;
``--rerun`` redoes everything). Score with ``python -m psg_eval --data DATA --output OUT``.

SD1.5 on a GPU server (see docs/evaluation.md):
    .venv/bin/python -m benchmarks.pie_bench --data PIE-Bench/data --out output \\
        --server http://127.0.0.1:8188 --ckpt v1-5-pruned-emaonly.safetensors --guidance-vae taesd
``--size N`` edits at N x N and scales the result back to 512 (quick checks only; PIE-Bench is
512 px).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from psg_cli import workflow
from psg_cli.batch import BatchRun, Worker
from psg_cli.dataset import BatchItem
from psg_cli.edit import EditRequest
from psg_cli.errors import CliError
from psg_cli.journal import latest_by_item
from psg_cli.main import _add_common, add_ray, close_workers, workers
from psg_eval import pie_bench as pie

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("pie_bench")
EDIT_NODE = "PSG Edit"
TEXT_GUIDANCE = {"ddim-cfg": "none", "null-text": "null-text optimization",
                 "negative-prompt": "negative-prompt", "direct-offsets": "direct offsets"}
PERCEPTUAL = {"": (False, False), "+psg": (True, False), "+psg-mask": (True, True)}
ALL_METHODS = [f"{t}{p}" for t in TEXT_GUIDANCE for p in PERCEPTUAL]
JOURNAL = "journal.jsonl"


@dataclass(frozen=True)
class Method:
    name: str
    text_optimization: str
    perceptual: bool
    masked: bool

    @classmethod
    def parse(cls, name: str) -> Method:
        for text, mode in TEXT_GUIDANCE.items():
            for suffix, (perceptual, masked) in PERCEPTUAL.items():
                if name == text + suffix:
                    return cls(name, mode, perceptual, masked)
        raise CliError(f"unknown method '{name}'; choose from: {', '.join(ALL_METHODS)}")

    def sets(self, psg_scale: float | None) -> list[str]:
        sets = [f"{EDIT_NODE}.text_optimization={self.text_optimization}"]
        if not self.perceptual:
            sets.append(f"{EDIT_NODE}.scale=0")
        elif psg_scale is not None:
            sets.append(f"{EDIT_NODE}.scale={psg_scale}")
        return sets


# ------------------------------------------------------------------------------ inputs
def prepare_inputs(data: Path, items: list[pie.PieItem], size: int,
                   folder: Path) -> dict[str, tuple[Path, Path]]:
    """Per key: the photo and the mask (white = edited) as PNGs at ``size`` (shared by every method)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for item in items:
        photo_png, mask_png = folder / f"{item.key}_{size}.png", folder / f"{item.key}_{size}_mask.png"
        if not (photo_png.is_file() and mask_png.is_file()):
            with Image.open(pie.photo_path(data, item)) as img:
                photo = img.convert("RGB")
            if photo.size != (pie.PIE_SIZE, pie.PIE_SIZE):
                raise CliError(f"{pie.photo_path(data, item)} is {photo.size[0]}x{photo.size[1]}; PIE-Bench "
                               f"photos are {pie.PIE_SIZE}x{pie.PIE_SIZE}")
            mask = Image.fromarray((pie.decode_mask(item.rle) * 255).astype("uint8"))
            if size != pie.PIE_SIZE:
                photo = photo.resize((size, size), Image.Resampling.LANCZOS)
                mask = mask.resize((size, size), Image.Resampling.NEAREST)
            photo.save(photo_png)
            mask.save(mask_png)
        out[item.key] = (photo_png, mask_png)
    return out


def write_layout(edit_png: Path, dest: Path) -> None:
    """The edit at 512x512 under PnPInversion's path, format from its extension; atomic."""
    with Image.open(edit_png) as img:
        edit = img.convert("RGB")
    if edit.size != (pie.PIE_SIZE, pie.PIE_SIZE):
        edit = edit.resize((pie.PIE_SIZE, pie.PIE_SIZE), Image.Resampling.BICUBIC)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(dest.suffix.lower(), "PNG")
    tmp = dest.with_name(dest.name + ".tmp")
    edit.save(tmp, format=fmt)
    os.replace(tmp, dest)


def export_missing(records: dict[str, dict[str, Any]], out_dir: Path, layout: dict[str, Path]) -> int:
    """Layout files for finished records whose file is absent (e.g. deleted after the run)."""
    n = 0
    for item_id, rec in records.items():
        if rec.get("status") == "ok" and not layout[item_id].is_file():
            write_layout(out_dir / rec["output"], layout[item_id])
            n += 1
    return n


def run_method(method: Method, args: argparse.Namespace, items: list[pie.PieItem],
               inputs: dict[str, tuple[Path, Path]], batch_workers: list[Worker]) -> dict[str, Any]:
    results_path = pie.method_dir(args.out, method.name) / pie.RUN_RECORD
    out_dir = results_path.parent
    journal_path = out_dir / JOURNAL
    if args.rerun:
        for path in (results_path, journal_path):
            path.unlink(missing_ok=True)
    layout = {it.key: pie.edited_path(args.out, method.name, it) for it in items}
    journaled = set(latest_by_item(journal_path))
    foreign = [it.key for it in items
               if it.key not in journaled and layout[it.key].is_file() and not args.rerun]
    if foreign:
        logger.warning("%s: %d edit(s) already in the layout without a run record: kept, not redone",
                       method.name, len(foreign))
    batch_items = [
        BatchItem(id=it.key, type=it.editing_type, raw_image=it.image_path,
                  request=EditRequest(image=inputs[it.key][0], source=pie.strip_brackets(it.source_prompt),
                                      target=pie.strip_brackets(it.target_prompt),
                                      mask=inputs[it.key][1] if method.masked else None))
        for it in items if it.key not in foreign]
    steps = [f"{EDIT_NODE}.steps={args.steps}"] if args.steps else []
    sets = [*method.sets(args.psg_scale), *steps, *args.sets]
    request = EditRequest(image=Path(), source="", target="", ckpt=args.ckpt, seed=args.seed,
                          guidance_vae=args.guidance_vae, sets=sets, workflow=args.workflow)
    settings = {"method": method.name, "workflow": args.workflow, "ckpt": args.ckpt,
                "guidance_vae": args.guidance_vae, "seed": args.seed, "sets": sets, "size": args.size,
                "retries": args.retries, "workers": [w.label for w in batch_workers]}
    template = workflow.load_workflow(args.workflow)
    run = BatchRun(batch_items, out_dir, results_path, args.data / pie.MAPPING_FILE, template, request,
                   settings, retries=args.retries, journal_path=journal_path,
                   stream=io.StringIO() if args.quiet else sys.stderr,
                   on_done=lambda item_id, output: write_layout(output, layout[item_id]))
    summary = run.run(batch_workers)["summary"]
    export_missing(run.records, out_dir, layout)
    return {**summary, "kept": len(foreign), "skipped": run.skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="PIE-Bench data folder (mapping_file.json, annotation_images/)")
    parser.add_argument("--out", type=Path, default=Path("output"), help="output root (default output/)")
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS,
                        help=f"default all: {' '.join(ALL_METHODS)}")
    parser.add_argument("--types", nargs="+", help="editing type ids 0-9 (default all)")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the workflow's, 50)")
    parser.add_argument("--psg-scale", type=float, help="perceptual guidance scale for +psg methods "
                                                        "(default: the workflow's)")
    parser.add_argument("--size", type=int, default=pie.PIE_SIZE,
                        help="edit at N x N, result scaled to 512 (quick checks)")
    parser.add_argument("--retries", type=int, default=1,
                        help="extra attempts per edit after a transient failure (out of memory, lost "
                             "connection)")
    parser.add_argument("--rerun", action="store_true", help="redo every edit, even finished ones")
    add_ray(parser)
    _add_common(parser, many_servers=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    if any(getattr(args, flag, None) for flag in ("p2p", "reweight", "blend")):
        parser.error("--p2p / --reweight / --blend: prompt-to-prompt methods are not part of this runner yet "
                     "(their blend words differ per image); it runs the PSG Edit methods listed in --help")
    try:
        methods = [Method.parse(m) for m in args.methods]
        workflow.load_workflow(args.workflow)
        items = pie.load_mapping(args.data, args.types)[: args.limit]
        inputs = prepare_inputs(args.data, items, args.size, args.out / "_inputs")
        batch_workers = workers(args)
        try:
            totals = {m.name: run_method(m, args, items, inputs, batch_workers) for m in methods}
        finally:
            close_workers(batch_workers)
    except (CliError, FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"pie_bench: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("pie_bench: interrupted (rerun the same command to resume)\n")
        return 130
    failed = 0
    for name, s in totals.items():
        failed += s["failed"]
        print(f"{name}: {s['ok']} ok, {s['failed']} failed of {s['total']} ({s['skipped']} resumed, "
              f"{s['kept']} kept) -> {pie.method_dir(args.out, name) / pie.IMAGES_DIR}")
    print(f"score with: python -m psg_eval --data {args.data} --output {args.out} --metrics pnp pack")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
