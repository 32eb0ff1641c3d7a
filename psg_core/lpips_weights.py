"""Offline LPIPS: the lpips package ships its linear heads but fetches the ImageNet backbone
from the internet on first use, which fails on offline machines. ``load_lpips`` builds LPIPS
without any download and fills the backbone from a local torchvision checkpoint instead.

Only tensors are ever deserialised (``torch.load(..., weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import lpips
import torch

logger = logging.getLogger(__name__)

#: torchvision's checkpoint file for each LPIPS backbone (the names torch hub caches them under).
BACKBONE_FILES: dict[str, str] = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
DOWNLOAD_ROOT = "https://download.pytorch.org/models/"


def backbone_url(net: str) -> str:
    """Where torchvision publishes the backbone checkpoint for ``net``."""
    return DOWNLOAD_ROOT + _filename(net)


def hub_checkpoint_dir() -> Path:
    """torch hub's cache, where an earlier online torchvision/lpips run would have saved the file."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_backbone(net: str, search_dirs: Iterable[str | os.PathLike] = ()) -> tuple[Path | None, list[Path]]:
    """The first backbone checkpoint found (``.pth`` or a ``.safetensors`` twin) and the folders searched."""
    name = _filename(net)
    names = (name, Path(name).with_suffix(".safetensors").name)
    folders = [Path(d).expanduser() for d in _as_list(search_dirs)] + [hub_checkpoint_dir()]
    for folder in folders:
        for candidate in names:
            path = folder / candidate
            if path.is_file():
                return path, folders
    return None, folders


def load_lpips(net: str = "alex", search_dirs: Iterable[str | os.PathLike] = (), *,
               allow_download: bool = False, home: str | None = None) -> lpips.LPIPS:
    """LPIPS (v0.1 linear heads) with its backbone read from disk: eval mode, frozen, on CPU.

    Looks in ``search_dirs`` in order, then torch hub's checkpoint cache. With
    ``allow_download`` a missing file is fetched into the first search folder (or the hub
    cache); otherwise a ``FileNotFoundError`` says which file, where it was looked for, where
    to download it and where to put it: ``home`` (the caller's usual folder for it, e.g. ComfyUI's
    model folder) or any folder searched.
    """
    filename = _filename(net)
    path, folders = find_backbone(net, search_dirs)
    if path is None:
        if not allow_download:
            searched = "\n".join(f"  - {f}" for f in folders)
            raise FileNotFoundError(
                f"LPIPS-{net} needs its backbone weights '{filename}', which were not found in:\n{searched}\n"
                f"Download {backbone_url(net)} and put it in "
                + (f"{home} (or any folder listed above)" if home else "one of the folders listed above")
                + "; nothing is downloaded automatically."
            )
        state = _download(net, folders[0])
    else:
        state = _read_state_dict(path)
        logger.info("LPIPS-%s: backbone from %s", net, path)
    model = _build_lpips(net)
    _copy_backbone(model, state, net)
    return model


def _filename(net: str) -> str:
    if net not in BACKBONE_FILES:
        raise ValueError(f"Unknown LPIPS network {net!r}; choose one of {', '.join(BACKBONE_FILES)}.")
    return BACKBONE_FILES[net]


def _as_list(search_dirs: Iterable[str | os.PathLike] | str | os.PathLike) -> list[str | os.PathLike]:
    if isinstance(search_dirs, (str, os.PathLike)):
        return [search_dirs]
    return list(search_dirs)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict of tensors (got {type(state).__name__}).")
    return state


def _download(net: str, folder: Path) -> dict[str, torch.Tensor]:
    logger.info("LPIPS-%s: downloading %s into %s", net, backbone_url(net), folder)
    folder.mkdir(parents=True, exist_ok=True)
    return torch.hub.load_state_dict_from_url(backbone_url(net), model_dir=str(folder), map_location="cpu",
                                              check_hash=True, weights_only=True)


def _build_lpips(net: str) -> lpips.LPIPS:
    """LPIPS with a random backbone (no download) and the packaged heads loaded tensor-only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    heads_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(heads, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"LPIPS-{net} heads at {heads_path} have unexpected keys "
                           f"{result.unexpected_keys[:5]}.")
    return model


def _copy_backbone(model: lpips.LPIPS, state: dict[str, torch.Tensor], net: str) -> None:
    """lpips splits torchvision's ``features`` into slices that keep the original layer indices,
    so ``net.slice<k>.<i>.<rest>`` is torchvision's ``features.<i>.<rest>``."""
    target = model.net.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, value in target.items():
        source = "features." + key.split(".", 1)[1]
        if source not in state or state[source].shape != value.shape:
            missing.append(source)
        else:
            mapped[key] = state[source]
    if missing:
        raise ValueError(f"The checkpoint is not torchvision's backbone for LPIPS-{net}: "
                         f"{len(missing)} tensors missing or mis-shaped (e.g. {missing[:3]}).")
    model.net.load_state_dict(mapped, strict=True)
    model.eval()
    model.requires_grad_(False)
