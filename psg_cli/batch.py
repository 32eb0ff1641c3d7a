"""``edit-batch``: a dataset of edits shared across servers, with retries, resumable.

One worker thread per backend pulls items from a shared queue, so a fast server takes more.
The results file is rewritten atomically after every item; a rerun skips items already
``ok`` whose image is still on disk, so a killed run resumes where it stopped.

Results schema (``psg-edit-batch/1``; read by ``psg_core/report.py``): paths are relative to
the results file's folder.
``{"schema", "dataset", "workflow", "settings": {...}, "updated", "summary": {...},
"items": [{"id", "type", "image", "source", "target", "mask", "mask_box", "status":
"ok"|"failed"|"pending", "output", "outputs", "metrics", "settings_file", "backend",
"attempts", "elapsed_s", "error"}]}``
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from . import workflow
from .dataset import BatchItem, safe_stem
from .edit import Backend, EditRequest, run_edit
from .errors import CliError, RetryableError, UnreachableError

logger = logging.getLogger(__name__)
SCHEMA = "psg-edit-batch/1"
ITEM_FIELDS = ("output", "outputs", "metrics", "backend", "elapsed_s", "checkpoint", "seed", "overrides")


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


class BatchRun:
    """State of one ``edit-batch`` invocation (results, queue, workers)."""

    def __init__(self, items: list[BatchItem], out_dir: Path, results_path: Path, dataset: Path,
                 template: dict[str, Any], retries: int, settings: dict[str, Any],
                 stream: TextIO | None = None) -> None:
        self.items = {it.id: it for it in items}
        self.order = [it.id for it in items]
        self.out_dir = out_dir
        self.results_path = results_path
        self.base = results_path.parent
        self.template = template
        self.retries = retries
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.queue: queue.Queue[tuple[str, int]] = queue.Queue()
        self.outstanding = 0
        self.skipped = 0
        self.results: dict[str, Any] = {
            "schema": SCHEMA, "dataset": str(dataset.resolve()), "workflow": settings.get("workflow"),
            "settings": settings, "updated": None, "summary": {}, "items": []}
        self.records: dict[str, dict[str, Any]] = {}

    # -- results file -------------------------------------------------------------------------
    def _base_record(self, item: BatchItem) -> dict[str, Any]:
        req = item.request
        return {"id": item.id, "type": item.type, "image": _rel(req.image, self.base),
                "source": req.source, "target": req.target,
                "mask": _rel(req.mask, self.base) if req.mask else None, "mask_box": req.mask_box,
                "status": "pending", "attempts": 0, "error": None}

    def load_previous(self) -> None:
        """Keep finished items from an earlier (possibly killed) run with the same output folder."""
        previous: dict[str, Any] = {}
        if self.results_path.is_file():
            try:
                previous = json.loads(self.results_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                logger.warning("ignoring unreadable %s: starting over", self.results_path)
        old = {r.get("id"): r for r in previous.get("items", []) if isinstance(r, dict)}
        for item_id in self.order:
            rec = old.get(item_id)
            item = self.items[item_id]
            fresh = self._base_record(item)
            same_edit = rec is not None and all(rec.get(k) == fresh[k] for k in ("source", "target", "image"))
            if (same_edit and rec.get("status") == "ok" and rec.get("output")
                    and (self.base / rec["output"]).is_file()):
                self.records[item_id] = rec
                self.skipped += 1
            else:
                self.records[item_id] = fresh
                self.queue.put((item_id, 0))
                self.outstanding += 1

    def write(self) -> None:
        with self.lock:
            self._write_locked()

    def _write_locked(self) -> None:
        items = [self.records[i] for i in self.order]
        counts = {s: sum(r["status"] == s for r in items) for s in ("ok", "failed", "pending")}
        self.results.update(items=items, summary={"total": len(items), **counts},
                            updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.results_path)

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    # -- work ---------------------------------------------------------------------------------
    def _finish(self, item_id: str, update: dict[str, Any]) -> None:
        with self.lock:
            self.records[item_id].update(update)
            self.outstanding -= 1
            self._write_locked()
            done = sum(self.records[i]["status"] != "pending" for i in self.order)
        rec = self.records[item_id]
        status = rec["status"] if rec["status"] == "ok" else f"FAILED ({rec['error']})"
        self._say(f"[{done}/{len(self.order)}] {item_id}: {status} on {rec.get('backend')}")

    def worker(self, backend: Backend, request_template: EditRequest) -> None:
        while True:
            with self.lock:
                if self.outstanding <= 0:
                    return
            try:
                item_id, attempt = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            item = self.items[item_id]
            req = replace(item.request, ckpt=request_template.ckpt, seed=request_template.seed,
                          sets=list(request_template.sets), workflow=request_template.workflow)
            with self.lock:
                self.records[item_id]["attempts"] = attempt + 1
            try:
                rec = run_edit(backend, req, self.out_dir, safe_stem(item_id), progress=False)
            except UnreachableError as err:
                # the server is gone: hand the item back without spending an attempt, stop this worker
                self.queue.put((item_id, attempt))
                self._say(f"{backend.label} is unreachable; giving its work to the other servers ({err})")
                return
            except CliError as err:
                if isinstance(err, RetryableError) and attempt < self.retries:
                    self._say(f"{item_id}: attempt {attempt + 1} failed on {backend.label}: {err}; retrying")
                    self.queue.put((item_id, attempt + 1))
                else:
                    self._finish(item_id, {"status": "failed", "error": str(err), "backend": backend.label})
                continue
            update = {k: rec.get(k) for k in ITEM_FIELDS}
            update.update(status="ok", error=None, settings_file=f"{safe_stem(item_id)}.json")
            update["output"] = _rel(self.out_dir / rec["output"], self.base)
            update["outputs"] = {t: [_rel(self.out_dir / f, self.base) for f in fs] for t, fs in rec["outputs"].items()}
            self._finish(item_id, update)

    def run(self, backends: list[Backend], request_template: EditRequest) -> dict[str, Any]:
        self.write()
        if self.skipped:
            self._say(f"resuming: {self.skipped} item(s) already done, {self.outstanding} to go")
        threads = [threading.Thread(target=self.worker, args=(b, request_template), daemon=True,
                                    name=f"psg-batch-{i}") for i, b in enumerate(backends)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
        with self.lock:
            if self.outstanding > 0:  # every server went away
                for item_id in self.order:
                    if self.records[item_id]["status"] == "pending":
                        self.records[item_id].update(status="failed", error="no reachable server left")
                self.outstanding = 0
            self._write_locked()
        return self.results


def preflight(backend: Backend, template: dict[str, Any], request: EditRequest) -> None:
    """Fail fast (before any upload) on a missing pack, unknown checkpoint or bad --set."""
    info = backend.object_info()
    workflow.check_nodes_installed(template, info, backend.label)
    prompt = workflow.fill(template, image="preflight.png", source="", target="", ckpt=request.ckpt,
                           seed=request.seed, guidance_vae=request.guidance_vae)
    workflow.apply_sets(prompt, info, request.sets)
    workflow.check_values(prompt, info, backend.label)
