"""Read PIE-Bench-like edit datasets into :class:`BatchItem` records.

Accepted shapes: a list of records, ``{"edits": [...]}`` (also ``records`` / ``items``), or a
mapping ``{id: record}`` as in PIE-Bench's ``mapping_file.json``. Field aliases cover both this
pack's format and PIE-Bench's; bracketed blend words (``[tiger]``) are unwrapped. An ``image``
that is not a file but names a scikit-image sample (``chelsea``, optionally with a ``loader``
like ``stereo_motorcycle()[0]``) is exported when scikit-image is installed: parsed, never
evaluated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .edit import EditRequest
from .errors import CliError

IMAGE_KEYS = ("image", "image_path", "path")
SOURCE_KEYS = ("source", "source_prompt", "original_prompt")
TARGET_KEYS = ("target", "target_prompt", "editing_prompt")
TYPE_KEYS = ("type", "edit_type", "editing_type_id")
_LOADER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(\)(?:\[(\d+)\])?$")


@dataclass
class BatchItem:
    id: str
    type: str | None
    request: EditRequest
    raw_image: str


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _records(data: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict):
        for key in ("edits", "records", "items"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            if all(isinstance(v, dict) for v in data.values()):
                return [(str(k), v) for k, v in data.items()]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return [(str(r.get("id", i)), r) for i, r in enumerate(data)]
    raise CliError("dataset: expected a list of edit records, {\"edits\": [...]}, or {id: record}")


def safe_stem(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") or "item"


def _skimage_image(name: str, loader: str | None, dest: Path) -> Path | None:
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        return None
    func, index = name, None
    if loader:
        m = _LOADER.match(loader.strip())
        if not m:
            raise CliError(f"dataset: loader '{loader}' must look like name() or name()[i]")
        func, index = m.group(1), m.group(2)
    fn = getattr(skimage.data, func, None)
    if not callable(fn) or func.startswith("_"):
        return None
    array = fn()
    if index is not None:
        array = array[int(index)]
    img = Image.fromarray(array)
    img.convert("RGB").save(dest)
    return dest


def _pie_mask(rle: list[int], dest: Path) -> Path:
    """A PIE-Bench RLE mask as a PNG (white = edited), decoded as PnPInversion decodes it, border
    included: one decoder for the runner, the evaluator and this CLI (``psg_eval.pie_bench``,
    which needs only numpy and Pillow; imported here only for datasets that carry RLE masks)."""
    from PIL import Image

    from psg_eval.pie_bench import decode_mask

    Image.fromarray((decode_mask(rle) * 255).astype("uint8")).save(dest)
    return dest


def load_dataset(path: Path, inputs_dir: Path, image_root: Path | None = None) -> list[BatchItem]:
    """Parse ``path``; materialise sample images and masks into ``inputs_dir``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"dataset not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CliError(f"cannot read dataset {path}: {err}") from None
    root = image_root or path.parent
    items: list[BatchItem] = []
    seen: set[str] = set()
    for item_id, rec in _records(data):
        where = f"dataset record '{item_id}'"
        if item_id in seen:
            raise CliError(f"{where}: duplicate id")
        seen.add(item_id)
        image, source, target = _first(rec, IMAGE_KEYS), _first(rec, SOURCE_KEYS), _first(rec, TARGET_KEYS)
        if not image or not source or not target:
            raise CliError(f"{where}: needs image, source and target (got keys {', '.join(rec)})")
        source, target = (re.sub(r"[\[\]]", "", str(s)) for s in (source, target))
        image_path = Path(str(image)).expanduser()
        if not image_path.is_absolute():
            image_path = root / image_path
        if not image_path.is_file():
            inputs_dir.mkdir(parents=True, exist_ok=True)
            exported = _skimage_image(str(image), rec.get("loader"),
                                      inputs_dir / f"{safe_stem(str(image))}.png")
            if exported is None:
                raise CliError(f"{where}: image not found: {image_path}")
            image_path = exported
        mask, box = rec.get("mask"), rec.get("mask_box")
        mask_path = None
        if isinstance(mask, list):
            inputs_dir.mkdir(parents=True, exist_ok=True)
            try:
                mask_path = _pie_mask([int(v) for v in mask], inputs_dir / f"{safe_stem(item_id)}_mask.png")
            except ValueError as err:
                raise CliError(f"{where}: {err}") from None
        elif isinstance(mask, str) and mask:
            mask_path = Path(mask).expanduser()
            mask_path = mask_path if mask_path.is_absolute() else root / mask_path
            if not mask_path.is_file():
                raise CliError(f"{where}: mask not found: {mask_path}")
        kind = _first(rec, TYPE_KEYS)
        items.append(BatchItem(
            id=item_id, type=None if kind is None else str(kind), raw_image=str(image),
            request=EditRequest(image=image_path.resolve(), source=source, target=target, mask=mask_path,
                                mask_box=[float(v) for v in box] if box and mask_path is None else None)))
    if not items:
        raise CliError(f"dataset {path} has no records")
    return items
