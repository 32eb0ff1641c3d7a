"""``python -m psg_cli.report RESULTS_OR_JOURNALS... --out DIR``: the evaluation report of
``edit-batch`` runs.

Reads this CLI's own files, the results file (schema ``psg-edit-batch/1``, ``batch.py``; a bare
list of items is accepted too) or the batch journal (``journal.jsonl``: the last record of each
item counts, so a report can be made of a batch still running, or of several shards' journals
together), and hands each item to ``psg_eval.report`` as a neutral ``ReportItem``. Paths are
relative to the file's folder (absolute paths work). Per item record:

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

Reading is standard library only; measuring needs torch, imported when a report is written (the
editing commands, ``python -m psg_cli``, never load it).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import journal

if TYPE_CHECKING:
    from psg_eval.report import ReportItem

logger = logging.getLogger(__name__)
LPIPS_NETS = ("alex", "vgg", "squeeze")


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The last ``record`` of each item in a batch journal (a torn line is skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in journal.read_entries(path):
        record = entry.get("record")
        if isinstance(record, dict) and record.get("id"):
            latest[str(record["id"])] = record
    return list(latest.values())


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """The item records of a results file (or journal) and the folder their paths are relative to."""
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"report: no journal at {path} (run `edit-batch` first).")
        return read_journal(path), path.parent
    import json

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


def _resolve(base: Path, value: Any) -> Path | None:
    if not value:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def report_item(record: dict[str, Any], base: Path) -> ReportItem:
    """One results record (see the module docstring) as the evaluation report's input."""
    from psg_eval.report import UNTYPED, ReportItem

    return ReportItem(
        id=str(record["id"]),
        photo=_resolve(base, record.get("image") or record.get("source_image")),
        edited=_resolve(base, record.get("output") or record.get("edited_image")),
        type=str(record.get("type") or UNTYPED), status=str(record.get("status") or "ok"),
        mask=_resolve(base, record.get("mask")), mask_box=record.get("mask_box"),
        source=str(record.get("source") or ""), target=str(record.get("target") or ""),
        error=record.get("error"), metrics=flatten_metrics(record.get("metrics") or {}))


def report_items(paths: Sequence[str | Path]) -> Iterator[ReportItem]:
    """Every item of the results files / journals, in order (each file read when reached)."""
    for path in paths:
        records, base = read_results(path)
        for record in records:
            yield report_item(record, base)


def write(paths: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, *,
          lpips_module: Any = None, thumbnails: str = "files") -> dict[str, Path]:
    """report.csv / .json / .html of the batch files in ``out_dir`` (default: beside the first)."""
    from psg_eval.report import write_report

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = Path(out_dir) if out_dir is not None else Path(paths[0]).parent
    return write_report(report_items(paths), out, lpips_module=lpips_module, thumbnails=thumbnails,
                        label=", ".join(str(p) for p in paths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psg_cli.report",
                                     description="CSV, JSON and offline HTML report of edit-batch results.")
    parser.add_argument("results", nargs="+",
                        help="results JSON or journal.jsonl written by edit-batch (several: one report, "
                             "e.g. the journals of --shard runs)")
    parser.add_argument("--out", default=None, help="output folder (default: next to the results file)")
    parser.add_argument("--lpips", choices=LPIPS_NETS, default=None,
                        help="also measure LPIPS with this network (its backbone weights must be on disk)")
    parser.add_argument("--lpips-dir", action="append", default=[], type=Path,
                        help="folder holding the LPIPS backbone weights")
    parser.add_argument("--inline-thumbnails", action="store_true",
                        help="embed thumbnails in report.html (one file; for small batches) "
                             "instead of thumbs/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        module = None
        if args.lpips:
            from psg_eval.models import lpips_network

            module = lpips_network(args.lpips, args.lpips_dir)
        paths = write(args.results, args.out, lpips_module=module,
                      thumbnails="inline" if args.inline_thumbnails else "files")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
