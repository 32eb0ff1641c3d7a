"""``edit-batch --ray``: the batch's workers are Ray actors, each owning one in-process ComfyUI.

Ray does what a cluster needs and this pack should not reinvent: placement (each actor
reserves ``num_gpus`` GPUs and ``num_cpus`` CPUs on whichever node has them), restarting a
crashed actor (``max_restarts``) and re-running the task it held (``max_task_retries``), and
moving photos and results between machines (object store: no shared filesystem). The client
keeps one thread per actor in the same scheduler as servers (``batch.py``), so the journal,
resume and the failure rules are the same for every engine.

Imported only for ``--ray``: the nodes and single-machine runs never need Ray.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from . import PACK_ROOT
from .batch import LocalWorker
from .edit import EditRequest, QueuedHook, run_edit
from .errors import CliError, EditTimeout, UnreachableError
from .failures import ClassifiedError, FailureKind, classify

logger = logging.getLogger(__name__)
ACTOR_MAX_RESTARTS = 3
ACTOR_TASK_RETRIES = 1
"""An edit held by an actor that crashed runs again once on its restarted actor (Ray's retry);
an actor that is gone for good hands the item back to the batch (another actor takes it)."""
TIMEOUT_MARGIN_S = 30.0


@dataclass
class RaySettings:
    address: str | None
    actors: int | None
    gpus_per_actor: float | None
    cpus_per_actor: float
    comfy_root: str
    base_directory: str | None
    cpu: bool
    timeout: float
    init_options: dict[str, Any] | None = None
    """Extra ``ray.init`` keyword arguments (tests: ``num_cpus``)."""


def _request_fields(req: EditRequest) -> dict[str, Any]:
    d = asdict(req)
    d["image"] = str(req.image)
    d["mask"] = str(req.mask) if req.mask else None
    return d


def _failure(err: BaseException) -> dict[str, Any]:
    return {"ok": False, "kind": classify(err).value, "error": str(err) or type(err).__name__}


class EditActor:
    """Runs on a Ray node: boots ComfyUI once, then edits photos sent as bytes."""

    def __init__(self, comfy_root: str, base_directory: str | None, cpu: bool, timeout: float,
                 pack_root: str) -> None:
        from . import inprocess_backend

        if (Path(pack_root) / "nodes").is_dir():  # the client's checkout exists here (one machine, NFS)
            inprocess_backend.PACK_ROOT = Path(pack_root)
        self.boot_error: str | None = None
        try:
            self.backend = inprocess_backend.InProcessBackend(
                Path(comfy_root), Path(base_directory) if base_directory else None, cpu, timeout=timeout)
        except Exception as err:  # told to the client by preflight, once
            self.boot_error = f"cannot start ComfyUI on this Ray node: {err}"
        self.scratch = Path(tempfile.mkdtemp(prefix="psg_ray_"))
        gpus = ray.get_gpu_ids()
        device = f" GPU {','.join(map(str, gpus))}" if gpus else " CPU"
        self.where = f"{ray.util.get_node_ip_address()}{device}"

    def ping(self) -> str:
        return self.where

    def cancel(self) -> None:
        self.backend.cancel()

    def preflight(self, template: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        if self.boot_error is not None:
            return {"ok": False, "kind": FailureKind.DETERMINISTIC.value, "error": self.boot_error}
        req = EditRequest(**{**request, "image": Path(request["image"])})
        try:
            LocalWorker(self.backend).preflight(template, req)
        except Exception as err:  # reported to the client as a value, not a Ray task failure
            return _failure(err)
        return {"ok": True, "where": self.where}

    def edit(self, payload: dict[str, Any]) -> dict[str, Any]:
        work = self.scratch / uuid.uuid4().hex
        try:
            inputs = work / "in"
            inputs.mkdir(parents=True)
            fields = dict(payload["request"])
            photo = inputs / payload["photo_name"]
            photo.write_bytes(payload["photo"])
            fields["image"] = photo
            if payload.get("mask") is not None:
                mask = inputs / f"mask_{payload['mask_name']}"
                mask.write_bytes(payload["mask"])
                fields["mask"] = mask
            req = EditRequest(**fields)
            out = work / "out"
            record = run_edit(self.backend, req, out, payload["stem"], progress=False,
                              template=payload["template"])
            files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
            record["backend"] = f"{payload['label']} ({self.where})"
            return {"ok": True, "record": record, "files": files}
        except Exception as err:
            return _failure(err)
        finally:
            shutil.rmtree(work, ignore_errors=True)


class RayWorker:
    """The client's handle on one actor (one thread of the batch drives it)."""

    def __init__(self, actor: Any, label: str, timeout: float) -> None:
        self.actor = actor
        self.label = label
        self.timeout = timeout

    def _get(self, ref: Any, timeout: float | None) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.cancel()
            raise EditTimeout(f"no result from {self.label} after {self.timeout:.0f} s: interrupted it "
                              f"(raise --timeout?)") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            last_line = str(err).strip().splitlines()[-1][:300] if str(err).strip() else ""
            raise UnreachableError(f"{self.label} is gone ({type(err).__name__}: {last_line})") from None

    @staticmethod
    def _raise(answer: dict[str, Any]) -> None:
        raise ClassifiedError(answer["error"], FailureKind(answer["kind"]))

    def preflight(self, template: dict[str, Any], request: EditRequest) -> None:
        answer = self._get(self.actor.preflight.remote(template, _request_fields(request)), None)
        if not answer["ok"]:
            kind = FailureKind(answer["kind"])
            if kind is FailureKind.WORKER_DOWN:
                raise UnreachableError(answer["error"])
            raise CliError(answer["error"])

    def edit(self, request: EditRequest, out_dir: Path, stem: str, template: dict[str, Any],
             on_queued: QueuedHook) -> dict[str, Any]:
        payload = {"request": _request_fields(request), "stem": stem, "template": template,
                   "label": self.label, "photo_name": request.image.name, "photo": request.image.read_bytes()}
        if request.mask is not None:
            payload.update(mask_name=request.mask.name, mask=request.mask.read_bytes())
        answer = self._get(self.actor.edit.remote(payload), self.timeout + TIMEOUT_MARGIN_S)
        if not answer["ok"]:
            self._raise(answer)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in answer["files"].items():
            (out_dir / name).write_bytes(data)
        record = answer["record"]
        record["image"], record["mask"] = str(request.image), str(request.mask) if request.mask else None
        return record

    def collect(self, queued: dict[str, Any], request: EditRequest, out_dir: Path,
                stem: str) -> dict[str, Any] | None:
        return None  # an actor keeps no queue: an edit cut short runs again

    def cancel(self) -> None:
        try:
            self.actor.cancel.remote()
        except Exception as err:  # the actor may be gone already
            logger.debug("cancel on %s: %s", self.label, err)

    def forget(self, prompt_id: str) -> None:
        pass

    def close(self) -> None:
        try:
            ray.kill(self.actor)
        except Exception as err:
            logger.debug("kill %s: %s", self.label, err)


def _connect(settings: RaySettings) -> None:
    if ray.is_initialized():
        return
    psg_cli_dir = Path(__file__).resolve().parent
    options: dict[str, Any] = {"runtime_env": {"py_modules": [str(psg_cli_dir)]},
                               "logging_level": logging.WARNING, "log_to_driver": False}
    options.update(settings.init_options or {})
    try:
        ray.init(address=settings.address, **options)
    except ConnectionError as err:
        raise CliError(f"cannot connect to Ray at {settings.address or 'RAY_ADDRESS / a local Ray'}: {err}. "
                       f"Start one with `ray start --head` or pass --ray ADDRESS.") from None


def actor_resources(settings: RaySettings) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) for this cluster."""
    total = ray.cluster_resources()
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    cpus = settings.cpus_per_actor
    count = settings.actors
    if count is None:
        count = int(total.get("GPU", 0) // gpus) if gpus > 0 else int(total.get("CPU", 1) // max(cpus, 1e-9))
    if count < 1:
        raise CliError(f"the Ray cluster has no room for one actor with {gpus:g} GPU and {cpus:g} CPU "
                       f"(it offers {total})")
    return count, gpus, cpus


def start_workers(settings: RaySettings) -> list[RayWorker]:
    """Connect to Ray and create the actors (they boot ComfyUI in parallel, checked by preflight)."""
    _connect(settings)
    count, gpus, cpus = actor_resources(settings)
    remote = ray.remote(EditActor).options(
        num_gpus=gpus, num_cpus=cpus, max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_TASK_RETRIES,
        max_concurrency=2)  # a second thread so cancel() can interrupt a running edit
    workers = []
    for n in range(count):
        actor = remote.remote(settings.comfy_root, settings.base_directory, settings.cpu, settings.timeout,
                              str(PACK_ROOT))
        workers.append(RayWorker(actor, f"ray actor {n}", settings.timeout))
    return workers
