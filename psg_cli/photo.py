"""Bring any photo file to what the workflow's Load Image expects: one 8-bit RGB frame, upright,
at a size the model family works at; and bring the result back to the photo's size.

Why on the client: ComfyUI's Load Image reads 16-bit greyscale by dividing by 255 (clipping
almost everything to white), turns transparency into a mask, and stacks the frames of an
animated file into a batch. Converting here makes every photo arrive the same way. Resizing
here is only done for workflows that do not resize the photo themselves (see
:func:`graph_resizes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from . import roles
from .errors import CliError

logger = logging.getLogger(__name__)

LATENT_MULTIPLE = 8
"""Pixels per latent cell for every supported family (SD1.x, SD2.x, SDXL, SD3, Flux VAEs)."""
MIN_SIDE = 32
"""The nodes refuse photos under 32 px a side (LPIPS): a long, thin photo is not shrunk below it."""
RESIZE_CLASSES = frozenset({
    "PSGFitImage", "ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageScaleToMaxDimension",
    "ResizeAndPadImage", "ImageResize", "ImageResize+", "ImageResizeKJ",
})
"""Node classes that resize an IMAGE: when one takes the Photo, the workflow sets the size."""
EXIF_ORIENTATION = 0x0112
BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited on white (what image viewers show)."""


class OutputSize(str, Enum):
    """Size of the saved edit: the photo's own, or the size the model worked at."""

    ORIGINAL = "original"
    WORKING = "working"


@dataclass
class PreparedPhoto:
    """The file to upload and what was done to get it (said in the CLI's output)."""

    path: Path
    photo_size: tuple[int, int]
    """(width, height) of the photo as seen upright (EXIF orientation applied)."""
    upload_size: tuple[int, int]
    changes: list[str] = field(default_factory=list)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def working_size_for(prompt: dict[str, Any], workflow_name: str) -> tuple[int, str]:
    """Long side (px) the workflow's model family works at, and the family it was read from.

    The family shows in the workflow's guidance VAE (taesd = SD1.x/SD2.x, taesdxl / taesd3 /
    taef1 = the 1024 px families), else in the workflow's or checkpoint's name.
    """
    names = [workflow_name.lower()]
    for node in prompt.values():
        for key in (roles.GUIDANCE_VAE.input, roles.CHECKPOINT.input):
            value = node.get("inputs", {}).get(key)
            if isinstance(value, str):
                names.append(Path(value).stem.lower())
    for family, (markers, side) in roles.WORKING_SIZE_BY_FAMILY.items():
        if any(marker in name for name in names for marker in markers):
            return side, family
    return roles.DEFAULT_WORKING_SIZE, roles.DEFAULT_FAMILY


def graph_resizes(prompt: dict[str, Any], photo_ids: list[str]) -> str | None:
    """Id of a node that resizes the Photo inside the workflow, or None."""
    for nid, node in prompt.items():
        class_type = node.get("class_type", "")
        if class_type not in RESIZE_CLASSES and "resize" not in class_type.lower():
            continue
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in photo_ids:
                return nid
    return None


def fit_size(size: tuple[int, int], max_side: int | None, multiple: int = LATENT_MULTIPLE) -> tuple[int, int]:
    """Scale down so the long side is at most ``max_side`` (never up, and never the short side
    below :data:`MIN_SIDE`), then round each side to the nearest multiple of ``multiple``."""
    w, h = size
    scale = min(1.0, max(max_side / max(w, h), MIN_SIDE / min(w, h))) if max_side else 1.0
    sides = (max(multiple, int(round(v * scale / multiple)) * multiple) for v in (w, h))
    return tuple(sides)  # type: ignore[return-value]


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise CliError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CliError(f"cannot read {path} as an image ({err}); "
                       f"give a PNG, JPEG, WebP or TIFF photo") from None
    return img


def to_rgb8(img: Any, changes: list[str]) -> Any:
    """One upright 8-bit RGB frame of ``img``; notes each conversion in ``changes``."""
    from PIL import Image, ImageOps

    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
        changes.append(f"first of {img.n_frames} frames")
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        changes.append("EXIF orientation applied")
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        if mode == "F" and array.max() <= 1.0:
            top = 1.0
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(grey, "L").convert("RGB")
        changes.append(f"{'16-bit' if top == 65535.0 else mode} greyscale -> 8-bit RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        img = flat
        changes.append("transparency composited on white")
    elif img.mode != "RGB":
        changes.append(f"{img.mode} -> RGB")
        img = img.convert("RGB")
    return img


def prepare_photo(path: Path, dest_dir: Path, max_side: int | None) -> PreparedPhoto:
    """Convert ``path`` for upload (written to ``dest_dir`` when anything changes).

    ``max_side`` None leaves the size alone (the workflow resizes); else the photo is scaled
    down to that long side and each side rounded to a multiple of 8.
    """
    from PIL import Image

    with _open(path) as img:
        changes: list[str] = []
        rgb = to_rgb8(img, changes)
        fmt = img.format
    photo_size = rgb.size
    target = fit_size(photo_size, max_side) if max_side is not None else photo_size
    if target != photo_size:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        changes.append(f"scaled {size_text(photo_size)} -> {size_text(target)}")
    if not changes and fmt in ("PNG", "JPEG", "WEBP"):
        return PreparedPhoto(path, photo_size, photo_size)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{path.stem}_rgb.png"
    rgb.save(out)
    return PreparedPhoto(out, photo_size, target, changes)


def prepare_mask(path: Path, dest: Path, size: tuple[int, int]) -> Path:
    """The mask as 8-bit grey at ``size`` (the uploaded photo's): it follows the photo's resize."""
    from PIL import Image

    with _open(path) as img:
        grey = to_rgb8(img, []).convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    grey.save(dest)
    return dest


def rescale_file(path: Path, size: tuple[int, int]) -> None:
    """Scale a downloaded result to ``size`` in place (LANCZOS), keeping its format and the
    workflow ComfyUI embeds in PNG text chunks."""
    from PIL import Image, PngImagePlugin

    with _open(path) as img:
        fmt = img.format or "PNG"
        text = dict(getattr(img, "text", {}) or {})
        scaled = img.resize(size, Image.Resampling.LANCZOS)
    options: dict[str, Any] = {}
    if fmt == "PNG" and text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    scaled.save(path, format=fmt, **options)


def image_size(path: Path) -> tuple[int, int]:
    with _open(path) as img:
        return img.size
