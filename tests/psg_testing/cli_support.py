"""Helpers for driving ``python -m psg_cli`` as a user would (a subprocess), and for the
API workflows with the checkpoint loader swapped for the test-only tiny checkpoint."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from psg_testing import host

CLI_TIMEOUT_S = 300


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    env.setdefault("PYTHONPYCACHEPREFIX", host.PYCACHE_PREFIX)  # keep the host tree untouched
    return env


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "psg_cli", *map(str, args)]


def run_cli(*args: str | Path, timeout: float = CLI_TIMEOUT_S,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI from the repo root; returns the finished process (never raises on rc).
    ``env`` adds to (or overrides) :func:`cli_env`."""
    return subprocess.run(cli_command(*args), cwd=host.REPO_ROOT, env={**cli_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def write_photo(path: Path, size: int = 128, which: str = "chelsea", crop: bool = True) -> Path:
    """A real photo (scikit-image) resized (bicubic) to ``size`` square, centre-cropped to a square
    first unless ``crop`` is False (then squeezed, as the older fixtures' photos are)."""
    import skimage.data

    array = getattr(skimage.data, which)()
    if crop:
        h, w = array.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        array = array[top:top + side, left:left + side]
    img = Image.fromarray(array).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def img2img_workflow(steps: int = 2) -> dict[str, Any]:
    """A plain img2img API workflow titled with the CLI's roles, on the tiny test checkpoint:
    it exercises every CLI mechanism without depending on the PSG nodes."""
    return {
        "1": {"class_type": "PSGTestTinyCheckpoint", "inputs": {"family": "sd15", "seed": 0},
              "_meta": {"title": "Checkpoint"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Photo"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "Source prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "Target prompt"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
              "inputs": {"model": ["1", 0], "seed": 1, "steps": steps, "cfg": 3.0, "sampler_name": "euler",
                         "scheduler": "normal", "positive": ["4", 0], "negative": ["3", 0],
                         "latent_image": ["5", 0], "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "psg_cli_test"},
              "_meta": {"title": "Edited image"}},
    }


def swap_checkpoint_loader(prompt: dict[str, Any], family: str = "sd15") -> dict[str, Any]:
    """Replace every CheckpointLoaderSimple by the tiny test checkpoint (same 3 outputs)."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "PSGTestTinyCheckpoint"
            node["inputs"] = {"family": family, "seed": 0}
    return out


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path
