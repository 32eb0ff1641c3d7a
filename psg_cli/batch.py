"""``edit-batch``: a dataset of edits shared across workers, journaled, resumable.

A worker is one ComfyUI executor: a server, the in-process executor, or a Ray actor holding
one (``ray_backend.py``). One client thread per worker takes items from a shared list, so a
fast worker takes more. Every state change is appended to the journal (``journal.py``), the
only record a resumed run trusts; ``results.json`` is a snapshot of it for reading, refreshed
while the batch runs (at most ~5 % of the time is spent rewriting it) and at the end.

Failures by kind (``failures.py``): transient ones are retried after an exponential backoff,
on another worker when there is one; deterministic ones are recorded once; a worker that stops
answering gives its item back without spending an attempt and is re-checked every
``recheck_s`` until it answers (and passes its preflight) again.

Results schema (``psg-edit-batch/1``; read by ``report.py``): paths are relative to
the results file's folder.
``{"schema", "dataset", "workflow", "settings": {...}, "updated", "summary": {...},
"items": [{"id", "type", "image", "source", "target", "mask", "mask_box", "status":
"ok"|"failed"|"pending", "output", "outputs", "metrics", "settings_file", "backend",
"attempts", "elapsed_s", "error", "kind", "key"}]}``
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TextIO

from . import roles, workflow
from .dataset import BatchItem, safe_stem
from .edit import Backend, EditRequest, QueuedHook, finish_edit, run_edit
from .errors import CliError, UnreachableError
from .failures import FailureKind, backoff_s, classify
from .journal import Journal, item_key, latest_by_key, pack_version

logger = logging.getLogger(__name__)
SCHEMA = "psg-edit-batch/1"
ITEM_FIELDS = ("output", "outputs", "metrics", "backend", "elapsed_s", "checkpoint", "seed", "overrides")
SNAPSHOT_SHARE = 0.05
"""Largest share of the wall time spent rewriting results.json while the batch runs."""
PREVIEW_ANY = "PreviewAny"
LOADER_SUFFIXES = ("Loader", "LoaderSimple")


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def request_for(item: BatchItem, template: EditRequest) -> EditRequest:
    """The item's photo and prompts with the run's settings (checkpoint, seed, VAE, --set...)."""
    return replace(item.request, ckpt=template.ckpt, seed=template.seed, guidance_vae=template.guidance_vae,
                   sets=list(template.sets), workflow=template.workflow, working_size=template.working_size,
                   output_size=template.output_size)


# --------------------------------------------------------------------------- preflight
def preflight(backend: Backend, template: dict[str, Any], request: EditRequest) -> None:
    """Fail fast (before any upload) on a missing pack, unknown checkpoint or bad --set."""
    info = backend.object_info()
    workflow.check_nodes_installed(template, info, backend.label)
    prompt = workflow.fill(template, image="preflight.png", source="", target="", ckpt=request.ckpt,
                           seed=request.seed, guidance_vae=request.guidance_vae)
    workflow.apply_sets(prompt, info, request.sets)
    workflow.check_values(prompt, info, backend.label)


def loaders_prompt(template: dict[str, Any], request: EditRequest,
                   info: dict[str, Any]) -> workflow.Prompt | None:
    """The workflow's model loaders (checkpoint, guidance VAE, LPIPS, ...) each feeding a
    ``PreviewAny``: running it loads every model file once, so a missing LPIPS or TAESD file
    fails the worker up front instead of every item. None when the host has no PreviewAny."""
    if PREVIEW_ANY not in info:
        return None
    prompt = workflow.fill(template, image="preflight.png", source="", target="", ckpt=request.ckpt,
                           seed=request.seed, guidance_vae=request.guidance_vae)
    workflow.apply_sets(prompt, info, request.sets)
    wanted = (set(workflow.find_role(prompt, roles.CHECKPOINT))
              | set(workflow.find_role(prompt, roles.GUIDANCE_VAE)))
    loaders = [nid for nid, node in prompt.items()
               if not any(workflow.is_link(v) for v in node["inputs"].values())
               and (nid in wanted or node["class_type"].endswith(LOADER_SUFFIXES))
               and (info.get(node["class_type"]) or {}).get("output")]
    if not loaders:
        return None
    check: workflow.Prompt = {nid: prompt[nid] for nid in loaders}
    for n, nid in enumerate(loaders):
        check[f"preflight_{n}"] = {"class_type": PREVIEW_ANY, "inputs": {"source": [nid, 0]}}
    return check


def _ignore_event(kind: str, data: dict[str, Any]) -> None:
    pass


# --------------------------------------------------------------------------- workers
class Worker(Protocol):
    """One ComfyUI executor the batch hands items to."""

    label: str

    def preflight(self, template: dict[str, Any], request: EditRequest) -> None: ...
    def edit(self, request: EditRequest, out_dir: Path, stem: str, template: dict[str, Any],
             on_queued: QueuedHook) -> dict[str, Any]: ...
    def collect(self, queued: dict[str, Any], request: EditRequest, out_dir: Path,
                stem: str) -> dict[str, Any] | None: ...
    def cancel(self) -> None: ...
    def forget(self, prompt_id: str) -> None: ...


class LocalWorker:
    """A server or the in-process executor, driven from this process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.label = backend.label

    def preflight(self, template: dict[str, Any], request: EditRequest) -> None:
        self.backend.object_info(refresh=True)  # a re-admitted server may have new nodes or models
        preflight(self.backend, template, request)
        check = loaders_prompt(template, request, self.backend.object_info())
        if check is None:
            return
        holder: dict[str, str] = {}

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "psg_queued":
                holder["prompt_id"] = str(data["prompt_id"])

        try:
            self.backend.run(check, on_event)
        except UnreachableError:
            raise
        except CliError as err:
            raise CliError(f"{self.label}: the workflow's models do not load ({err})") from None
        if "prompt_id" in holder:
            self.forget(holder["prompt_id"])

    def edit(self, request: EditRequest, out_dir: Path, stem: str, template: dict[str, Any],
             on_queued: QueuedHook) -> dict[str, Any]:
        return run_edit(self.backend, request, out_dir, stem, progress=False, template=template,
                        on_queued=on_queued)

    def collect(self, queued: dict[str, Any], request: EditRequest, out_dir: Path,
                stem: str) -> dict[str, Any] | None:
        collect = getattr(self.backend, "collect", None)
        if collect is None:
            return None
        started = time.monotonic()
        outputs = collect(queued["prompt_id"], queued["prompt"], _ignore_event)
        if outputs is None:
            return None
        return finish_edit(self.backend, request, queued["prompt"], queued.get("overrides") or {}, outputs,
                           out_dir, stem, started)

    def cancel(self) -> None:
        cancel = getattr(self.backend, "cancel", None)
        if cancel is not None:
            cancel()

    def forget(self, prompt_id: str) -> None:
        forget = getattr(self.backend, "forget", None)
        if forget is not None:
            forget(prompt_id)


# --------------------------------------------------------------------------- the run
@dataclass
class Task:
    item_id: str
    attempt: int = 0
    """Attempts already spent."""
    ready_at: float = 0.0
    avoid: str | None = None
    """The worker the last attempt failed on (taken elsewhere when another worker is up)."""
    queued: dict[str, Any] | None = None
    """A prompt an earlier client queued (``submitted`` entry): collect it instead of re-queueing."""


class BatchRun:
    """State of one ``edit-batch`` invocation (keys, journal, task list, worker threads)."""

    def __init__(self, items: list[BatchItem], out_dir: Path, results_path: Path, dataset: Path,
                 template: dict[str, Any], request: EditRequest, settings: dict[str, Any], *,
                 retries: int = 1, journal_path: Path | None = None, backoff_s: float = 1.0,
                 recheck_s: float = 10.0, grace_s: float = 600.0, stream: TextIO | None = None,
                 journal_fsync: bool = True, on_done: Callable[[str, Path], None] | None = None) -> None:
        """``on_done(item_id, output_file)`` runs after each successful edit, before the journal
        records it ok (e.g. to copy the result into another layout); an exception from it fails
        the attempt like an edit error would."""
        self.items = {it.id: it for it in items}
        self.order = [it.id for it in items]
        self.out_dir = out_dir
        self.results_path = results_path
        self.base = results_path.parent
        self.template = template
        self.request = request
        self.retries = retries
        self.backoff = backoff_s
        self.recheck_s = recheck_s
        self.grace_s = grace_s
        self.stream = stream or sys.stderr
        self.journal_path = journal_path or out_dir / "journal.jsonl"
        self.journal_fsync = journal_fsync
        self.on_done = on_done
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.tasks: list[Task] = []
        self.outstanding = 0
        self.skipped = 0
        self.collected = 0
        self.keys: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.live: set[str] = set()
        self.labels: list[str] = []
        self.all_down_since: float | None = None
        self.stopping = False
        self.journal: Journal | None = None
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0
        self.results: dict[str, Any] = {
            "schema": SCHEMA, "dataset": str(dataset.resolve()), "workflow": settings.get("workflow"),
            "settings": {**settings, "pack_version": pack_version()},
            "journal": _rel(self.journal_path, self.base), "updated": None, "summary": {}, "items": []}

    # -- records ------------------------------------------------------------------------------
    def _base_record(self, item: BatchItem) -> dict[str, Any]:
        req = item.request
        return {"id": item.id, "type": item.type, "image": _rel(req.image, self.out_dir),
                "source": req.source, "target": req.target,
                "mask": _rel(req.mask, self.out_dir) if req.mask else None, "mask_box": req.mask_box,
                "status": "pending", "attempts": 0, "error": None, "kind": None, "key": self.keys[item.id]}

    def _for_results(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A journal record (paths relative to the output folder) as a results item."""
        if self.base.resolve() == self.out_dir.resolve():
            return rec
        out = dict(rec)
        for k in ("image", "mask", "output", "settings_file"):
            if out.get(k):
                out[k] = _rel(self.out_dir / out[k], self.base)
        if out.get("outputs"):
            out["outputs"] = {t: [_rel(self.out_dir / f, self.base) for f in fs]
                              for t, fs in out["outputs"].items()}
        return out

    def plan(self) -> None:
        """Key every item; keep what the journal says is done with the same key; collect what an
        earlier client queued; everything else is to do."""
        req = self.request
        for item_id in self.order:
            it = self.items[item_id].request
            self.keys[item_id] = item_key(photo=it.image, mask=it.mask, mask_box=it.mask_box,
                                          source=it.source, target=it.target, template=self.template,
                                          ckpt=req.ckpt, seed=req.seed, guidance_vae=req.guidance_vae,
                                          sets=req.sets, working_size=req.working_size,
                                          output_size=req.output_size)
        latest = latest_by_key(self.journal_path)
        for item_id in self.order:
            entry = latest.get((item_id, self.keys[item_id]))
            record = (entry or {}).get("record") or {}
            if (entry and entry["state"] == "ok" and record.get("output")
                    and (self.out_dir / record["output"]).is_file()):
                self.records[item_id] = record
                self.skipped += 1
                continue
            self.records[item_id] = self._base_record(self.items[item_id])
            queued = None
            if entry and entry["state"] == "submitted" and entry.get("prompt_id") and entry.get("prompt"):
                queued = {k: entry.get(k) for k in ("worker", "prompt_id", "prompt", "overrides")}
            self.tasks.append(Task(item_id, attempt=int((entry or {}).get("attempt") or 0) if queued else 0,
                                   queued=queued))
            self.outstanding += 1

    # -- results snapshot ---------------------------------------------------------------------
    def write(self, force: bool = True) -> None:
        with self.lock:
            self._write_locked(force)

    def _write_locked(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_snapshot < self._snapshot_cost / SNAPSHOT_SHARE:
            return
        items = [self._for_results(self.records[i]) for i in self.order]
        counts = {s: sum(r["status"] == s for r in items) for s in ("ok", "failed", "pending")}
        self.results.update(items=items, summary={"total": len(items), **counts},
                            updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.results_path)
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = self._last_snapshot - now

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    # -- scheduling ---------------------------------------------------------------------------
    def _take(self, label: str) -> Task | None:
        """The next task for ``label``; None when all is done or the worker is down."""
        with self.cond:
            while True:
                if self.outstanding <= 0 or self.stopping or label not in self.live:
                    return None
                now = time.monotonic()
                wait = 0.5
                for n, task in enumerate(self.tasks):
                    if task.ready_at > now:
                        wait = min(wait, task.ready_at - now)
                        continue
                    if task.queued is not None and task.queued.get("worker") != label:
                        continue
                    if task.avoid == label and len(self.live) > 1:
                        continue
                    return self.tasks.pop(n)
                self.cond.wait(timeout=max(wait, 0.01))

    def _give_back(self, task: Task) -> None:
        with self.cond:
            self.tasks.append(task)
            self.cond.notify_all()

    def _mark_down(self, label: str) -> None:
        with self.cond:
            self.live.discard(label)
            if not self.live and self.all_down_since is None:
                self.all_down_since = time.monotonic()
            for task in self.tasks:  # a restarted server has lost its queue: queue them anew
                if task.queued is not None and task.queued.get("worker") == label:
                    task.queued = None
            self.cond.notify_all()

    def _finish(self, item_id: str, update: dict[str, Any], state: str) -> None:
        assert self.journal is not None
        with self.cond:
            self.records[item_id].update(update)
            record = dict(self.records[item_id])
        self.journal.append(item_id, self.keys[item_id], state, record=record)
        with self.cond:
            self.outstanding -= 1
            self._write_locked()
            done = sum(self.records[i]["status"] != "pending" for i in self.order)
            self.cond.notify_all()
        status = record["status"] if record["status"] == "ok" else f"FAILED ({record['error']})"
        self._say(f"[{done}/{len(self.order)}] {item_id}: {status} on {record.get('backend')}")

    def _recheck(self, worker: Worker) -> bool:
        """Wait for a down worker to answer again; False when there is nothing left to wait for."""
        while True:
            deadline = time.monotonic() + self.recheck_s
            while time.monotonic() < deadline:
                with self.cond:
                    if self.outstanding <= 0 or self.stopping:
                        return False
                    if (not self.live and self.all_down_since is not None
                            and time.monotonic() - self.all_down_since > self.grace_s):
                        self._fail_pending_locked(f"no worker answered for {self.grace_s:.0f} s")
                        return False
                time.sleep(min(0.2, self.recheck_s))
            try:
                worker.preflight(self.template, self.request)
            except UnreachableError:
                continue
            except CliError as err:
                self._say(f"{worker.label} answers again but fails its preflight: {err}")
                continue
            with self.cond:
                self.live.add(worker.label)
                self.all_down_since = None
                self.cond.notify_all()
            self._say(f"{worker.label} answers again: re-admitted")
            return True

    def _fail_pending_locked(self, reason: str) -> None:
        for task in self.tasks:
            self.records[task.item_id].update(status="failed", error=reason, kind=FailureKind.TRANSIENT.value)
        self.tasks.clear()
        self.outstanding = 0
        self.cond.notify_all()

    def _attempt(self, worker: Worker, task: Task) -> None:
        assert self.journal is not None
        item = self.items[task.item_id]
        key = self.keys[task.item_id]
        req = request_for(item, self.request)
        stem = safe_stem(task.item_id)
        number = task.attempt + 1

        queued_ids: list[str] = []

        def on_queued(prompt_id: str, prompt: workflow.Prompt, applied: dict[str, Any]) -> None:
            queued_ids.append(prompt_id)
            self.journal.append(task.item_id, key, "submitted", worker=worker.label, prompt_id=prompt_id,
                                prompt=prompt, overrides=applied, attempt=task.attempt)

        try:
            rec = None
            if task.queued is not None:
                rec = worker.collect(task.queued, req, self.out_dir, stem)
                if rec is not None:
                    queued_ids.append(task.queued["prompt_id"])
                    with self.cond:
                        self.collected += 1
            if rec is None:
                rec = worker.edit(req, self.out_dir, stem, self.template, on_queued)
            if self.on_done is not None:
                self.on_done(task.item_id, self.out_dir / rec["output"])
        except Exception as err:  # every failure is classified; nothing escapes the thread
            kind = classify(err)
            message = str(err) or type(err).__name__
            if kind is not FailureKind.WORKER_DOWN:
                self._forget(worker, queued_ids)  # the journal keeps the message
            if kind is FailureKind.WORKER_DOWN:
                self._give_back(replace(task, queued=None))
                self._mark_down(worker.label)
                self._say(f"{worker.label} stopped answering; its item goes back to the queue and it is "
                          f"re-checked every {self.recheck_s:g} s ({message})")
                return
            if kind is FailureKind.TRANSIENT and number <= self.retries:
                delay = backoff_s(number, self.backoff)
                self.journal.append(task.item_id, key, "retry", kind=kind.value, error=message,
                                    attempt=number, worker=worker.label)
                self._say(f"{task.item_id}: attempt {number} failed on {worker.label}: {message}; "
                          f"retrying in {delay:g} s")
                self._give_back(Task(task.item_id, number, time.monotonic() + delay, avoid=worker.label))
                return
            self._finish(task.item_id, {"status": "failed", "error": message, "kind": kind.value,
                                        "backend": worker.label, "attempts": number}, "failed")
            return
        update = {k: rec.get(k) for k in ITEM_FIELDS}
        update.update(status="ok", error=None, kind=None, attempts=number, settings_file=f"{stem}.json")
        self._finish(task.item_id, update, "ok")
        self._forget(worker, queued_ids)

    @staticmethod
    def _forget(worker: Worker, prompt_ids: list[str]) -> None:
        """Drop finished prompts from the server's /history once the journal holds their outcome."""
        for prompt_id in prompt_ids:
            worker.forget(prompt_id)

    def _work(self, worker: Worker) -> None:
        while True:
            if worker.label not in self.live:
                if not self._recheck(worker):
                    return
                continue
            task = self._take(worker.label)
            if task is None:
                if worker.label in self.live:
                    return
                continue
            self._attempt(worker, task)

    def _preflight_all(self, workers: list[Worker]) -> tuple[list[Worker], list[Worker]]:
        """Each worker's preflight, in parallel: (passed, unreachable); raises when none passed."""
        def check(worker: Worker) -> BaseException | None:
            try:
                worker.preflight(self.template, self.request)
            except CliError as err:
                return err
            return None

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(workers), 1)) as pool:
            errors = list(pool.map(check, workers))
        passed = [w for w, e in zip(workers, errors, strict=True) if e is None]
        down = [w for w, e in zip(workers, errors, strict=True) if isinstance(e, UnreachableError)]
        failed = [e for e in errors if e is not None]
        for err in failed if passed else failed[1:]:  # with no worker left, the first one is the error
            if isinstance(err, UnreachableError):
                self._say(f"psg: warning: {err} Continuing without it "
                          f"(re-checked every {self.recheck_s:g} s).")
            else:
                self._say(f"psg: warning: {err}; continuing without it")
        if not passed:
            raise failed[0]
        return passed, down

    def run(self, workers: list[Worker]) -> dict[str, Any]:
        """Run every outstanding item on ``workers``; returns the results snapshot."""
        if not self.keys:
            self.plan()
        self.labels = [w.label for w in workers]
        self.write()
        if self.skipped:
            self._say(f"resuming: {self.skipped} item(s) already done, {self.outstanding} to go")
        if self.outstanding <= 0:
            return self.results
        passed, down = self._preflight_all(workers)
        self.live = {w.label for w in passed}
        for task in self.tasks:
            if task.queued is not None and task.queued.get("worker") not in self.live:
                task.queued = None
        self.journal = Journal(self.journal_path, fsync=self.journal_fsync)
        threads = [threading.Thread(target=self._work, args=(w,), daemon=True, name=f"psg-batch-{i}")
                   for i, w in enumerate(passed + down)]
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self._stop(workers)
            raise
        finally:
            self.journal.close()
        with self.cond:
            if self.outstanding > 0:
                self._fail_pending_locked("no worker left")
            self._write_locked(force=True)
        if self.collected:
            self._say(f"collected {self.collected} edit(s) an earlier run had queued")
        return self.results

    def _stop(self, workers: list[Worker]) -> None:
        """Ctrl-C: interrupt every running prompt and take it off its queue."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for worker in workers:
            try:
                worker.cancel()
            except Exception as err:  # best effort while stopping
                logger.warning("could not cancel on %s: %s", worker.label, err)
        with self.cond:
            self._write_locked(force=True)
