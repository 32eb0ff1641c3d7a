"""Run editing methods over PIE-Bench and write outputs where PnPInversion's evaluation reads them.

For every selected PIE-Bench image and method, the shipped ``psg_edit`` workflow (or
``--workflow``) runs through the CLI's backends (``--server URL`` once or several times, e.g.
one ComfyUI per GPU, or ``--comfy-root`` in-process) and the edit is written to

    OUT/<method>/annotation_images/<image_path>

(saved by Pillow from the file name, as PnPInversion's runners save). Methods are
``<text guidance>[+psg[-mask]]``:

    ddim-cfg          DDIM inversion + plain CFG (PSG Edit text_optimisation = none)
    null-text         null-text optimisation         negative-prompt   negative-prompt inversion
    direct-offsets    direct-inversion offsets
    +psg              perceptual (LPIPS) guidance on (scale from the workflow or --psg-scale)
    +psg-mask         ... with PIE-Bench's mask given to it (1 = edited, free to change)

without a suffix the perceptual guidance is off (scale 0). Rerun the same command to resume:
finished edits are kept (``OUT/<method>/psg_batch/results.json`` holds their records and
timings; ``--rerun`` redoes everything). Score with ``python -m psg_eval --data DATA --output OUT``.

SD1.5 on a GPU server (see docs/evaluation.md):
    .venv/bin/python benchmarks/pie_bench.py --data PIE-Bench/data --out output \\
        --server http://127.0.0.1:8188 --ckpt v1-5-pruned-emaonly.safetensors --guidance-vae taesd
``--size N`` edits at N x N and scales the result back to 512 (quick checks only; PIE-Bench is
512 px).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from psg_cli import workflow  # noqa: E402
from psg_cli.batch import BatchRun, preflight  # noqa: E402
from psg_cli.dataset import BatchItem  # noqa: E402
from psg_cli.edit import EditRequest  # noqa: E402
from psg_cli.errors import CliError, UnreachableError  # noqa: E402
from psg_cli.main import _add_common, _backends  # noqa: E402
from psg_eval import pie_bench as pie  # noqa: E402

logger = logging.getLogger("pie_bench")
EDIT_NODE = "PSG Edit"
TEXT_GUIDANCE = {"ddim-cfg": "none", "null-text": "null-text optimisation", "negative-prompt": "negative-prompt",
                 "direct-offsets": "direct offsets"}
PERCEPTUAL = {"": (False, False), "+psg": (True, False), "+psg-mask": (True, True)}
ALL_METHODS = [f"{t}{p}" for t in TEXT_GUIDANCE for p in PERCEPTUAL]


@dataclass(frozen=True)
class Method:
    name: str
    text_optimisation: str
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
        sets = [f"{EDIT_NODE}.text_optimisation={self.text_optimisation}"]
        if not self.perceptual:
            sets.append(f"{EDIT_NODE}.scale=0")
        elif psg_scale is not None:
            sets.append(f"{EDIT_NODE}.scale={psg_scale}")
        return sets


# ------------------------------------------------------------------------------ inputs
def prepare_inputs(data: Path, items: list[pie.PieItem], size: int, folder: Path) -> dict[str, tuple[Path, Path]]:
    """Per key: the photo and the mask (white = edited) as PNGs at ``size`` (shared by every method)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for item in items:
        photo_png, mask_png = folder / f"{item.key}_{size}.png", folder / f"{item.key}_{size}_mask.png"
        if not (photo_png.is_file() and mask_png.is_file()):
            with Image.open(pie.photo_path(data, item)) as img:
                photo = img.convert("RGB")
            if photo.size != (pie.PIE_SIZE, pie.PIE_SIZE):
                raise CliError(f"{pie.photo_path(data, item)} is {photo.size[0]}x{photo.size[1]}; PIE-Bench photos "
                               f"are {pie.PIE_SIZE}x{pie.PIE_SIZE}")
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


class PieBatchRun(BatchRun):
    """``edit-batch``'s run (work sharing, retries, resume) that also writes PnPInversion's layout."""

    def __init__(self, *args: Any, layout: dict[str, Path], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layout = layout

    def _finish(self, item_id: str, update: dict[str, Any]) -> None:
        if update.get("status") == "ok":
            write_layout(self.base / update["output"], self.layout[item_id])
        super()._finish(item_id, update)

    def export_missing(self) -> int:
        """Layout files for finished records whose file is absent (e.g. a run killed between the two)."""
        n = 0
        for item_id, rec in self.records.items():
            if rec.get("status") == "ok" and not self.layout[item_id].is_file():
                write_layout(self.base / rec["output"], self.layout[item_id])
                n += 1
        return n


def previous_ok(results_path: Path) -> set[str]:
    if not results_path.is_file():
        return set()
    try:
        records = json.loads(results_path.read_text(encoding="utf-8")).get("items", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return set()
    return {str(r.get("id")) for r in records if isinstance(r, dict) and r.get("status") == "ok"}


def run_method(method: Method, args: argparse.Namespace, items: list[pie.PieItem],
               inputs: dict[str, tuple[Path, Path]], backends: list) -> dict[str, Any]:
    folder = pie.method_dir(args.out, method.name)
    results_path = folder / pie.RUN_RECORD
    if args.rerun and results_path.is_file():
        results_path.unlink()
    done_before = previous_ok(results_path)
    layout = {it.key: pie.edited_path(args.out, method.name, it) for it in items}
    foreign = [it.key for it in items if it.key not in done_before and layout[it.key].is_file() and not args.rerun]
    if foreign:
        logger.warning("%s: %d edit(s) already in the layout without a run record: kept, not redone",
                       method.name, len(foreign))
    batch_items = [
        BatchItem(id=it.key, type=it.editing_type, raw_image=it.image_path,
                  request=EditRequest(image=inputs[it.key][0], source=pie.strip_brackets(it.source_prompt),
                                      target=pie.strip_brackets(it.target_prompt),
                                      mask=inputs[it.key][1] if method.masked else None,
                                      guidance_vae=args.guidance_vae))
        for it in items if it.key not in foreign]
    sets = [*method.sets(args.psg_scale), *([f"{EDIT_NODE}.steps={args.steps}"] if args.steps else []), *args.sets]
    template = workflow.load_workflow(args.workflow)
    request = EditRequest(image=Path(), source="", target="", ckpt=args.ckpt, seed=args.seed,
                          guidance_vae=args.guidance_vae, sets=sets, workflow=args.workflow)
    live = []
    for backend in backends:
        try:
            preflight(backend, template, request)
            live.append(backend)
        except UnreachableError as err:
            sys.stderr.write(f"pie_bench: warning: {err} Continuing without it.\n")
    if not live:
        raise CliError("no reachable ComfyUI backend")
    settings = {"method": method.name, "workflow": args.workflow, "ckpt": args.ckpt, "guidance_vae": args.guidance_vae,
                "seed": args.seed, "sets": sets, "size": args.size, "servers": [b.label for b in live]}
    run = PieBatchRun(batch_items, folder / pie.RUN_RECORD.parent, results_path, args.data / pie.MAPPING_FILE,
                      template, args.retries, settings, stream=sys.stderr if not args.quiet else io.StringIO(),
                      layout=layout)
    run.load_previous()
    if run.skipped:
        sys.stderr.write(f"{method.name}: resuming, {run.skipped} edit(s) already done\n")
    summary = run.run(live, request)["summary"]
    run.export_missing()
    return {**summary, "kept": len(foreign), "skipped": run.skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="PIE-Bench data folder (mapping_file.json, annotation_images/)")
    parser.add_argument("--out", type=Path, default=Path("output"), help="output root (default output/)")
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, help=f"default all: {' '.join(ALL_METHODS)}")
    parser.add_argument("--types", nargs="+", help="editing type ids 0-9 (default all)")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the workflow's, 50)")
    parser.add_argument("--psg-scale", type=float, help="perceptual guidance scale for +psg methods (default: the workflow's)")
    parser.add_argument("--size", type=int, default=pie.PIE_SIZE, help="edit at N x N, result scaled to 512 (quick checks)")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts per failed edit")
    parser.add_argument("--rerun", action="store_true", help="redo every edit, even finished ones")
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
        backends = _backends(args)
        totals = {m.name: run_method(m, args, items, inputs, backends) for m in methods}
    except (CliError, FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"pie_bench: error: {err}\n")
        return 2
    failed = 0
    for name, s in totals.items():
        failed += s["failed"]
        print(f"{name}: {s['ok']} ok, {s['failed']} failed of {s['total']} ({s['skipped']} resumed, {s['kept']} kept) "
              f"-> {pie.method_dir(args.out, name) / pie.IMAGES_DIR}")
    print(f"score with: python -m psg_eval --data {args.data} --output {args.out} --metrics pnp pack")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
