"""The evaluation models, read from local folders only (nothing is downloaded).

=========================  ==============================================================
metric                     file(s)
=========================  ==============================================================
LPIPS (PnPInversion)       ``squeezenet1_1-b8a52dc0.pth`` in ``LPIPS_DIR`` (torchvision's)
LPIPS (this pack)          ``alexnet-owt-7be5be79.pth`` in ``LPIPS_DIR``
structure distance         ``dino_vitbase8_pretrain.pth`` (DINO ViT-B/8) in ``DINO_DIR``, or a
                           transformers folder of ``facebook/dino-vitb8``
CLIP similarity            a transformers folder of ``openai/clip-vit-large-patch14``
=========================  ==============================================================

:func:`check_files` lists every missing file at once, so one run of the evaluator tells the
user everything to fetch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dino
from .clip_score import load_clip_scorer
from .core import lpips_weights
from .pie_metrics import MetricModels

logger = logging.getLogger(__name__)

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
CLIP_NAME = "openai/clip-vit-large-patch14"
CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CLIP_TOKENIZER = (("vocab.json", "merges.txt"), ("tokenizer.json",))
CLIP_PROCESSOR = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5


@dataclass
class ModelPaths:
    lpips_dir: Path
    dino: Path
    clip: Path

    @classmethod
    def under(cls, models_root: Path, lpips_dir: Path | None = None, dino_path: Path | None = None,
              clip: Path | None = None) -> ModelPaths:
        """Defaults inside a models folder (e.g. ``ComfyUI/models``): lpips/, dino/,
        clip_score/clip-vit-large-patch14/."""
        root = Path(models_root).expanduser()
        return cls(lpips_dir=Path(lpips_dir or root / "lpips").expanduser(),
                   dino=Path(dino_path or root / "dino").expanduser(),
                   clip=Path(clip or root / "clip_score" / "clip-vit-large-patch14").expanduser())


def _clip_missing(folder: Path) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / w).is_file() for w in CLIP_WEIGHTS):
        missing.append(" or ".join(CLIP_WEIGHTS))
    if not any(all((folder / f).is_file() for f in group) for group in CLIP_TOKENIZER):
        missing.append("vocab.json + merges.txt (or tokenizer.json)")
    if not any((folder / f).is_file() for f in CLIP_PROCESSOR):
        missing.append(" or ".join(CLIP_PROCESSOR))
    return missing


def check_files(needed: set[str], paths: ModelPaths) -> list[str]:
    """One line per missing file, saying where it was looked for and where to get it."""
    lines = []
    for net, key in (("squeeze", "lpips_squeeze"), ("alex", "lpips_alex")):
        if key in needed and lpips_weights.find_backbone(net, [paths.lpips_dir])[0] is None:
            lines.append(f"LPIPS-{net} backbone {lpips_weights.BACKBONE_FILES[net]} not in {paths.lpips_dir} "
                         f"(nor the torch hub cache): download {lpips_weights.backbone_url(net)}")
    if "dino" in needed and dino.dino_file(paths.dino) is None:
        lines.append(f"DINO ViT-B/8 {dino.DINO_FILE} not in {paths.dino}: download {DINO_URL} "
                     f"(or save facebook/dino-vitb8 there with transformers' save_pretrained)")
    if "clip" in needed:
        for name in _clip_missing(paths.clip):
            lines.append(f"CLIP {name} not in {paths.clip}: save {CLIP_NAME} there with transformers' "
                         f"CLIPModel / CLIPProcessor .save_pretrained")
    return lines


def lpips_network(net: str, folders: list[Path]) -> torch.nn.Module:
    """LPIPS with its ``net`` backbone read from ``folders`` (or torch hub's cache), offline."""
    return lpips_weights.load_lpips(net, folders)


def load(needed: set[str], paths: ModelPaths, device: str = "cpu",
         dino_antialias: bool = False) -> MetricModels:
    """The models the selected metrics need; FileNotFoundError listing every missing file first."""
    missing = check_files(needed, paths)
    if missing:
        listed = "\n".join(f"  - {m}" for m in missing)
        raise FileNotFoundError(f"the evaluation models are missing files:\n{listed}\n"
                                "(--models DIR, or --lpips-dir / --dino / --clip, say where they are)")
    models = MetricModels(dino_antialias=dino_antialias)
    if "lpips_squeeze" in needed:
        models.lpips_squeeze = lpips_network("squeeze", [paths.lpips_dir]).to(device)
    if "lpips_alex" in needed:
        models.lpips_alex = lpips_network("alex", [paths.lpips_dir]).to(device)
    if "dino" in needed:
        models.dino = dino.load_dino(paths.dino).to(device)
    if "clip" in needed:
        models.clip = load_clip_scorer(paths.clip, device)
    return models
