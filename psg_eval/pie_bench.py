"""The PIE-Bench data set and PnPInversion's file conventions.

* ``mapping_file.json``: ``{key: {"image_path", "original_prompt", "editing_prompt",
  "editing_type_id", "blended_word", "editing_instruction", "mask"}}``; images under
  ``annotation_images/<image_path>`` (512x512).
* ``mask``: run-length pairs ``start, length`` over the flattened 512x512 image (row-major),
  1 = edited region. A run past the end is clipped. Then the first and last rows and columns
  are set to 1 ("to avoid annotation errors in boundary"), so the border never counts as
  unedited background.
* Prompts carry P2P blend brackets (``a [tiger] sitting``); they are removed for editing and
  for CLIP scoring.
* An edited image lives at ``OUTPUT/<method>/annotation_images/<image_path>``; an image that is
  not square (a side-by-side strip such as ``photo | reconstruction | edit``) is cropped to its
  last 512x512 block (right, bottom) before scoring.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PIE_SIZE = 512
MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
RUN_RECORD = Path("psg_batch") / "results.json"
"""Where the runner keeps its per-edit records (timings) inside ``OUTPUT/<method>/``."""

EDITING_TYPES: dict[str, str] = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change attribute (content)",
    "5": "change attribute (pose)",
    "6": "change attribute (color)",
    "7": "change attribute (material)",
    "8": "change background",
    "9": "change style",
}


@dataclass(frozen=True)
class PieItem:
    """One PIE-Bench record."""

    key: str
    image_path: str
    source_prompt: str
    target_prompt: str
    editing_type: str
    rle: tuple[int, ...]

    @property
    def type_name(self) -> str:
        return EDITING_TYPES.get(self.editing_type, f"type {self.editing_type}")


def strip_brackets(prompt: str) -> str:
    """P2P blend brackets removed: ``a [tiger]`` -> ``a tiger``."""
    return prompt.replace("[", "").replace("]", "")


def decode_mask(rle: list[int] | tuple[int, ...], size: int = PIE_SIZE) -> np.ndarray:
    """PIE-Bench RLE -> (size, size) float32 mask, 1 = edited, border rows and columns forced to 1."""
    if len(rle) % 2:
        raise ValueError(f"PIE-Bench mask: expected (start, length) pairs, got {len(rle)} numbers.")
    total = size * size
    flat = np.zeros(total, dtype=np.float32)
    for start, length in zip(rle[0::2], rle[1::2], strict=True):
        start, length = int(start), int(length)
        if start < 0 or length < 0:
            raise ValueError(f"PIE-Bench mask: negative run ({start}, {length}).")
        flat[start:min(start + length, total)] = 1.0
    mask = flat.reshape(size, size)
    mask[0, :] = mask[-1, :] = 1.0
    mask[:, 0] = mask[:, -1] = 1.0
    return mask


def load_mapping(data_dir: Path, types: list[str] | None = None) -> list[PieItem]:
    """The records of ``data_dir/mapping_file.json`` (optionally only some editing types), in file order."""
    path = Path(data_dir) / MAPPING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"PIE-Bench: no {MAPPING_FILE} in {data_dir} (expected the data folder of "
                                f"PIE-Bench: {MAPPING_FILE} + {IMAGES_DIR}/; see docs/evaluation.md).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"PIE-Bench: {path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"PIE-Bench: {path} must map keys to records.")
    items = []
    for key, rec in data.items():
        missing = [f for f in ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")
                   if f not in rec]
        if missing:
            raise ValueError(f"PIE-Bench: record {key} in {path} lacks {', '.join(missing)}.")
        item = PieItem(key=str(key), image_path=str(rec["image_path"]),
                       source_prompt=str(rec["original_prompt"]),
                       target_prompt=str(rec["editing_prompt"]), editing_type=str(rec["editing_type_id"]),
                       rle=tuple(int(v) for v in rec["mask"]))
        if types is None or item.editing_type in types:
            items.append(item)
    return items


def photo_path(data_dir: Path, item: PieItem) -> Path:
    return Path(data_dir) / IMAGES_DIR / item.image_path


def method_dir(output_root: Path, method: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*", method):
        raise ValueError(f"method name {method!r}: use letters, digits and _ . + = - (it names a folder).")
    return Path(output_root) / method


def edited_path(output_root: Path, method: str, item: PieItem) -> Path:
    """``OUTPUT/<method>/annotation_images/<image_path>``, where PnPInversion's evaluate.py looks."""
    return method_dir(output_root, method) / IMAGES_DIR / item.image_path


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def crop_edit(image: np.ndarray, size: int = PIE_SIZE) -> np.ndarray:
    """A non-square output keeps its last ``size`` x ``size`` block (bottom right), as PnPInversion crops."""
    h, w = image.shape[:2]
    if h == w:
        return image
    if h < size or w < size:
        raise ValueError(f"edited image is {w}x{h}: a non-square output must hold a {size}x{size} edit "
                         "at its end.")
    return image[h - size:, w - size:]


def read_edit(path: Path, size: int = PIE_SIZE) -> np.ndarray:
    """The edited image as scored: read as RGB, then cropped by :func:`crop_edit`."""
    return crop_edit(read_rgb(path), size)
