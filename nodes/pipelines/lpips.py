"""LPIPS from ComfyUI's ``models/lpips`` folder, offline, as the PSG_LPIPS value nodes pass on."""

from __future__ import annotations

import copy
import logging

import folder_paths
import torch

from ..host.folders import register_model_folder

logger = logging.getLogger(__name__)

NODE = "PSG LPIPS Loader"
FOLDER = "lpips"
HOME = "ComfyUI/models/lpips"
"""Where the missing-file message tells users to put a backbone."""
NETS = ("alex", "vgg", "squeeze")


def register_folder() -> None:
    """``models/lpips`` as a ComfyUI model folder, so extra_model_paths.yaml can add more."""
    register_model_folder(FOLDER, folder_paths.supported_pt_extensions)


register_folder()


class LpipsHandle:
    """The PSG_LPIPS value: a CPU LPIPS network (normal tensors, eval, frozen) plus its name.

    ``on(device)`` gives a private copy for one run, so the shared node output is never moved
    and nothing stays on the GPU between queued runs."""

    def __init__(self, net: str, module: torch.nn.Module) -> None:
        self.net = net
        self.module = module

    def on(self, device: torch.device) -> torch.nn.Module:
        with torch.inference_mode(False), torch.no_grad():
            clone = copy.deepcopy(self.module).to(device, torch.float32).eval()
        clone.requires_grad_(False)
        return clone

    def __repr__(self) -> str:
        return f"LpipsHandle({self.net})"


def load(net: str) -> LpipsHandle:
    from ...psg_core.lpips_weights import load_lpips

    if net not in NETS:
        raise ValueError(f"{NODE}: unknown network {net!r}; pick one of {', '.join(NETS)}.")
    dirs = [d for d in folder_paths.get_folder_paths(FOLDER)]
    try:
        with torch.inference_mode(False):
            module = load_lpips(net, dirs, allow_download=False, home=HOME)
    except (FileNotFoundError, RuntimeError, OSError, ValueError) as exc:
        raise RuntimeError(f"{NODE}: {exc}") from None
    with torch.inference_mode(False):
        module = module.to("cpu", torch.float32).eval()
        module.requires_grad_(False)
    logger.info("%s: loaded LPIPS-%s", NODE, net)
    return LpipsHandle(net, module)
