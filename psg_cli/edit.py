"""One edit: upload the photo, fill the workflow, run it on a backend, save image + settings."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import roles, workflow
from .errors import CliError
from .progress import ProgressReporter

logger = logging.getLogger(__name__)
DEFAULT_WORKFLOW = "psg_edit"
QUEUED_EVENT = "psg_queued"
"""Event a backend sends (with ``prompt_id``) once a prompt is queued, so a batch can journal it."""


class Backend(Protocol):
    label: str

    def object_info(self, refresh: bool = False) -> dict[str, Any]: ...
    def upload(self, path: Path, name: str) -> str: ...
    def fetch(self, ref: dict[str, Any]) -> bytes: ...
    def run(self, prompt: workflow.Prompt, on_event: Any) -> dict[str, Any]: ...


@dataclass
class EditRequest:
    """What one edit needs; ``mask_box`` is [x0, y0, x1, y1] fractions (1 = edited region)."""

    image: Path
    source: str
    target: str
    mask: Path | None = None
    mask_box: list[float] | None = None
    ckpt: str | None = None
    seed: int | None = None
    guidance_vae: str | None = None
    sets: list[str] = field(default_factory=list)
    workflow: str = DEFAULT_WORKFLOW


def _upload_name(path: Path, data: bytes) -> str:
    """Content-addressed name: re-uploads dedupe, different photos never collide."""
    return f"psg_{hashlib.sha256(data).hexdigest()[:16]}{path.suffix.lower() or '.png'}"


def upload(backend: Backend, path: Path) -> str:
    if not path.is_file():
        raise CliError(f"image not found: {path}")
    return backend.upload(path, _upload_name(path, path.read_bytes()))


def mask_from_box(image: Path, box: list[float], dest: Path) -> Path:
    """A grey PNG the size of ``image``: white inside ``box`` (edited), black elsewhere."""
    from PIL import Image, ImageDraw

    if len(box) != 4 or not all(0.0 <= float(v) <= 1.0 for v in box) or box[0] >= box[2] or box[1] >= box[3]:
        raise CliError(f"mask_box {box}: expected [x0, y0, x1, y1] fractions with x0 < x1, y0 < y1")
    with Image.open(image) as im:
        w, h = im.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rectangle(
        [round(box[0] * w), round(box[1] * h), round(box[2] * w) - 1, round(box[3] * h) - 1], fill=255)
    mask.save(dest)
    return dest


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "output"


def _edited_nodes(prompt: workflow.Prompt, outputs: dict[str, Any]) -> list[str]:
    with_images = [nid for nid in outputs if outputs[nid].get("images")]
    titled = [nid for nid in with_images if workflow.title_of(prompt, nid).lower() == roles.EDITED.title.lower()]
    if titled:
        return titled
    saved = [nid for nid in with_images if prompt.get(nid, {}).get("class_type") == "SaveImage"]
    return saved[:1] or with_images[:1]


def save_outputs(backend: Backend, prompt: workflow.Prompt, outputs: dict[str, Any], out_dir: Path,
                 stem: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Download every output image; returns ({title: [file names]}, {title: non-image outputs})."""
    edited = _edited_nodes(prompt, outputs)
    if not edited:
        raise CliError("the workflow ran but produced no image (does it have a SaveImage node?)")
    files: dict[str, list[str]] = {}
    extras: dict[str, Any] = {}
    for nid in sorted(outputs, key=lambda n: (n not in edited, n)):
        title = workflow.title_of(prompt, nid)
        out = outputs[nid]
        for i, ref in enumerate(out.get("images") or []):
            base = stem if nid in edited else f"{stem}_{_slug(title)}"
            name = f"{base}{'' if i == 0 else f'_{i}'}{Path(ref['filename']).suffix or '.png'}"
            (out_dir / name).write_bytes(backend.fetch(ref))
            files.setdefault(title, []).append(name)
        rest = {k: v for k, v in out.items() if k != "images"}
        if rest:
            extras[title] = rest
    return files, extras


QueuedHook = Callable[[str, workflow.Prompt, dict[str, Any]], None]
"""Called with (prompt_id, filled prompt, applied --set values) once a server has queued the edit."""


def build_prompt(backend: Backend, req: EditRequest, stem: str, template: workflow.Prompt | None = None
                 ) -> tuple[workflow.Prompt, dict[str, Any]]:
    """Upload the photo (and mask) and fill the workflow; returns (prompt, applied --set values)."""
    template = template if template is not None else workflow.load_workflow(req.workflow)
    info = backend.object_info()
    workflow.check_nodes_installed(template, info, backend.label)
    photo = upload(backend, req.image)
    prompt = workflow.fill(template, image=photo, source=req.source, target=req.target,
                           ckpt=req.ckpt, seed=req.seed, guidance_vae=req.guidance_vae)
    mask_path = req.mask
    with tempfile.TemporaryDirectory(prefix="psg_mask_") as tmp:
        if mask_path is None and req.mask_box is not None:
            mask_path = mask_from_box(req.image, req.mask_box, Path(tmp) / f"{req.image.stem}_mask.png")
        if mask_path is not None:
            workflow.add_mask(prompt, info, upload(backend, mask_path))
    workflow.set_output_prefix(prompt, f"psg/{stem}-{uuid.uuid4().hex[:8]}")
    applied = workflow.apply_sets(prompt, info, req.sets)
    workflow.check_values(prompt, info, backend.label)
    return prompt, applied


def finish_edit(backend: Backend, req: EditRequest, prompt: workflow.Prompt, applied: dict[str, Any],
                outputs: dict[str, Any], out_dir: Path, stem: str, started: float) -> dict[str, Any]:
    """Download the outputs of a finished prompt; write and return the settings/result record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files, extras = save_outputs(backend, prompt, outputs, out_dir, stem)
    edited_title = workflow.title_of(prompt, _edited_nodes(prompt, outputs)[0])
    record = {
        "image": str(req.image),
        "source": req.source,
        "target": req.target,
        "mask": str(req.mask) if req.mask else None,
        "mask_box": req.mask_box,
        "workflow": req.workflow,
        "backend": backend.label,
        "checkpoint": next((prompt[n]["inputs"].get(roles.CHECKPOINT.input)
                            for n in workflow.find_role(prompt, roles.CHECKPOINT)), None),
        "guidance_vae": next((prompt[n]["inputs"].get(roles.GUIDANCE_VAE.input)
                              for n in workflow.find_role(prompt, roles.GUIDANCE_VAE)), None),
        "seed": req.seed,
        "overrides": applied,
        "output": files[edited_title][0],
        "outputs": files,
        "metrics": extras,
        "elapsed_s": round(time.monotonic() - started, 3),
        "prompt": prompt,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return record


def run_edit(backend: Backend, req: EditRequest, out_dir: Path, stem: str, progress: bool = True,
             progress_prefix: str = "", template: workflow.Prompt | None = None,
             on_queued: QueuedHook | None = None) -> dict[str, Any]:
    """Do one edit end to end; returns the settings/result record also written to STEM.json."""
    started = time.monotonic()
    prompt, applied = build_prompt(backend, req, stem, template)
    reporter = ProgressReporter(prompt, enabled=progress, prefix=progress_prefix)

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == QUEUED_EVENT and on_queued is not None:
            on_queued(str(data["prompt_id"]), prompt, applied)
        reporter.event(kind, data)

    try:
        outputs = backend.run(prompt, on_event)
    finally:
        reporter.finish()
    return finish_edit(backend, req, prompt, applied, outputs, out_dir, stem, started)


def request_dict(req: EditRequest) -> dict[str, Any]:
    d = asdict(req)
    d["image"] = str(req.image)
    d["mask"] = str(req.mask) if req.mask else None
    return d
