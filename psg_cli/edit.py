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

from . import photo, roles, workflow
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
    working_size: int | None = None
    """Long side the CLI scales the photo down to; None: the family's default (or the
    workflow's own resize node), 0: keep the photo's size (sides still rounded to a multiple of 8)."""
    output_size: str = photo.OutputSize.ORIGINAL.value


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
    w, h = photo.image_size(image)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rectangle(
        [round(box[0] * w), round(box[1] * h), round(box[2] * w) - 1, round(box[3] * h) - 1], fill=255)
    mask.save(dest)
    return dest


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "output"


def _edited_nodes(prompt: workflow.Prompt, outputs: dict[str, Any]) -> list[str]:
    with_images = [nid for nid in outputs if outputs[nid].get("images")]
    edited_title = roles.EDITED.title.lower()
    titled = [nid for nid in with_images if workflow.title_of(prompt, nid).lower() == edited_title]
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


WORKFLOW_SIZED = "workflow"
"""``sizes.output_size`` when the workflow's own resize node decided the sizes."""
FIT_IMAGE = "PSGFitImage"
FIT_UI_KEY = "psg_fit"
"""Where PSG Fit Image reports the photo's and the working size in a prompt's history."""
FIT_OUTPUT_SIZE = {photo.OutputSize.ORIGINAL.value: "photo size",
                   photo.OutputSize.WORKING.value: "working size"}
"""The client's --output-size as PSG Fit Image's output_size option."""


def client_side_size(req: EditRequest, prompt: workflow.Prompt) -> tuple[int | None, str]:
    """(long side the CLI scales the photo down to, None = leave the size to the workflow; why)."""
    resizer = photo.graph_resizes(prompt, workflow.find_role(prompt, roles.PHOTO))
    if resizer is not None and prompt[resizer].get("class_type") == FIT_IMAGE:
        # the pack's own resize node takes both choices as its inputs
        inputs = prompt[resizer]["inputs"]
        if req.working_size is not None:
            inputs["long_side"] = req.working_size
        inputs["output_size"] = FIT_OUTPUT_SIZE[req.output_size]
        return None, f"resized in the workflow by {workflow.describe_node(prompt, resizer)}"
    if resizer is not None:
        if req.working_size is not None:
            raise CliError(f"this workflow resizes the photo itself "
                           f"({workflow.describe_node(prompt, resizer)}): change that size with "
                           f"--set '{resizer}.INPUT=VALUE', not --working-size")
        return None, f"resized in the workflow by {workflow.describe_node(prompt, resizer)}"
    if req.working_size is not None:
        if req.working_size == 0:
            return 0, "the photo's own size (--working-size 0)"
        return req.working_size, f"long side at most {req.working_size} px (--working-size)"
    side, family = photo.working_size_for(prompt, req.workflow)
    return side, f"long side at most {side} px, the {family} default (--working-size N to change)"


@dataclass
class PhotoSizing:
    """What the client did to the photo and why: the record says it, the result is scaled back by it."""

    prepared: photo.PreparedPhoto
    working_rule: str
    by_workflow: bool
    """The workflow sizes the photo (and the result) itself; the client only converted it."""


def prepare_photo(req: EditRequest, prompt: workflow.Prompt, folder: Path) -> PhotoSizing:
    """The photo as one upright 8-bit RGB frame at the size the workflow needs, written in ``folder``
    (deterministic: a client collecting a prompt after a restart can redo it)."""
    max_side, working_rule = client_side_size(req, prompt)
    return PhotoSizing(photo.prepare_photo(req.image, folder, max_side), working_rule, max_side is None)


def _finish_outputs(out_dir: Path, files: list[str], prepared: photo.PreparedPhoto,
                    output_size: str) -> tuple[int, int]:
    """Scale the edited image(s) back to the photo's size unless the working size was asked for;
    returns the size the model worked at (the edited image as the workflow saved it)."""
    working = photo.image_size(out_dir / files[0])
    if output_size == photo.OutputSize.ORIGINAL.value and working != prepared.photo_size:
        for name in files:
            photo.rescale_file(out_dir / name, prepared.photo_size)
    return working


def describe_sizes(record: dict[str, Any]) -> str:
    """One line for the CLI's output: the photo's size, what the model worked at, what was saved."""
    sizes = record["sizes"]
    changes = f" ({'; '.join(sizes['photo_changes'])})" if sizes["photo_changes"] else ""
    if sizes["output_size"] == WORKFLOW_SIZED:
        worked = f"model worked at {sizes['working']} " if sizes["working"] else ""
        return (f"photo {sizes['photo']}{changes}; {worked}({sizes['working_rule']}); "
                f"saved at {sizes['saved']}")
    return (f"photo {sizes['photo']}{changes}; model worked at {sizes['working']} ({sizes['working_rule']}); "
            f"saved at {sizes['saved']} (--output-size {sizes['output_size']})")


QueuedHook = Callable[[str, workflow.Prompt, dict[str, Any]], None]
"""Called with (prompt_id, filled prompt, applied --set values) once a server has queued the edit."""


def build_prompt(backend: Backend, req: EditRequest, stem: str, template: workflow.Prompt | None = None
                 ) -> tuple[workflow.Prompt, dict[str, Any], PhotoSizing]:
    """Prepare and upload the photo (and mask) and fill the workflow; returns (prompt, applied --set
    values, what was done to the photo)."""
    if req.output_size not in {o.value for o in photo.OutputSize}:
        raise CliError(f"output size '{req.output_size}': expected one of "
                       f"{', '.join(o.value for o in photo.OutputSize)}")
    template = template if template is not None else workflow.load_workflow(req.workflow)
    info = backend.object_info()
    workflow.check_nodes_installed(template, info, backend.label)
    prompt = workflow.fill(template, image="", source=req.source, target=req.target,
                           ckpt=req.ckpt, seed=req.seed, guidance_vae=req.guidance_vae)
    mask_path = req.mask
    with tempfile.TemporaryDirectory(prefix="psg_photo_") as tmp:
        sizing = prepare_photo(req, prompt, Path(tmp))
        prepared = sizing.prepared
        workflow.set_role(prompt, roles.PHOTO, upload(backend, prepared.path))
        if mask_path is None and req.mask_box is not None:
            mask_path = mask_from_box(prepared.path, req.mask_box,
                                      Path(tmp) / f"{req.image.stem}_box_mask.png")
        if mask_path is not None:
            if not mask_path.is_file():
                raise CliError(f"mask not found: {mask_path}")
            mask_path = photo.prepare_mask(mask_path, Path(tmp) / f"{req.image.stem}_mask.png",
                                           prepared.upload_size)
            workflow.add_mask(prompt, info, upload(backend, mask_path))
    workflow.set_output_prefix(prompt, f"psg/{stem}-{uuid.uuid4().hex[:8]}")
    applied = workflow.apply_sets(prompt, info, req.sets)
    workflow.check_values(prompt, info, backend.label)
    return prompt, applied, sizing


def finish_edit(backend: Backend, req: EditRequest, prompt: workflow.Prompt, applied: dict[str, Any],
                outputs: dict[str, Any], out_dir: Path, stem: str, started: float,
                sizing: PhotoSizing | None = None) -> dict[str, Any]:
    """Download the outputs of a finished prompt; write and return the settings/result record.
    ``sizing`` None (a prompt collected after a restart): the photo's preparation is redone."""
    if sizing is None:
        with tempfile.TemporaryDirectory(prefix="psg_photo_") as tmp:
            sizing = prepare_photo(req, prompt, Path(tmp))
    prepared = sizing.prepared
    out_dir.mkdir(parents=True, exist_ok=True)
    files, extras = save_outputs(backend, prompt, outputs, out_dir, stem)
    edited_title = workflow.title_of(prompt, _edited_nodes(prompt, outputs)[0])
    if sizing.by_workflow:  # the workflow already saved the edit at the size it was asked for
        output_size = WORKFLOW_SIZED
        reported = [v[FIT_UI_KEY][0] for v in extras.values() if isinstance(v, dict) and v.get(FIT_UI_KEY)]
        working = reported[0]["working"] if reported else None
    else:
        output_size = req.output_size
        working = photo.size_text(_finish_outputs(out_dir, files[edited_title], prepared, req.output_size))
    sizes = {"photo": photo.size_text(prepared.photo_size), "photo_changes": prepared.changes,
             "uploaded": photo.size_text(prepared.upload_size), "working": working,
             "working_rule": sizing.working_rule, "output_size": output_size,
             "saved": photo.size_text(photo.image_size(out_dir / files[edited_title][0]))}
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
        "sizes": sizes,
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
    prompt, applied, sizing = build_prompt(backend, req, stem, template)
    reporter = ProgressReporter(prompt, enabled=progress, prefix=progress_prefix)

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == QUEUED_EVENT and on_queued is not None:
            on_queued(str(data["prompt_id"]), prompt, applied)
        reporter.event(kind, data)

    try:
        outputs = backend.run(prompt, on_event)
    finally:
        reporter.finish()
    return finish_edit(backend, req, prompt, applied, outputs, out_dir, stem, started, sizing)


def request_dict(req: EditRequest) -> dict[str, Any]:
    d = asdict(req)
    d["image"] = str(req.image)
    d["mask"] = str(req.mask) if req.mask else None
    return d
