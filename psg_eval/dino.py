"""DINO ViT structure distance as PnPInversion computes it (Tumanyan et al., Splice).

For an image pair (uint8 RGB arrays, optionally multiplied by a 0/1 mask):

1. the images are taken as float **0..255** values (PnPInversion does not divide by 255 here),
   resized so the short side is 224 (bilinear; ``antialias`` off by default, as torchvision did
   for tensors before 0.17) and normalised with the ImageNet mean / std;
2. a DINO ViT (ViT-B/8: ``dino_vitbase8_pretrain.pth``) runs to its last block (block 11) and
   that block's attention **keys** are taken for every token, CLS included, all heads
   concatenated: a (tokens, 768) matrix;
3. the cosine self-similarity matrix of those keys (norm product clamped at 1e-8) is formed
   for each image;
4. the structure distance is the mean squared difference of the two matrices.

The network here is DINO's ViT (pre-norm blocks, LayerNorm eps 1e-6, qkv with bias, exact
GELU), filled from the original checkpoint's state dict; nothing is downloaded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_SIZE = 224
DINO_FILE = "dino_vitbase8_pretrain.pth"
HEAD_DIM = 64
COSINE_EPS = 1e-8


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, dim)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn.qkv(self.norm1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.attn.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoViT(nn.Module):
    """DINO's vision transformer, only as far as the last block's keys."""

    def __init__(self, dim: int, depth: int, patch: int, tokens: int, hidden: int) -> None:
        super().__init__()
        heads = max(1, dim // HEAD_DIM)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "checkpoint") -> DinoViT:
        needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                  "blocks.0.mlp.fc1.weight")
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"{source} is not a DINO ViT checkpoint (no {', '.join(missing)}); expected "
                             f"{DINO_FILE} from the DINO release.")
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
        model = cls(dim, depth, patch, state["pos_embed"].shape[1], state["blocks.0.mlp.fc1.weight"].shape[0])
        own = {k: v for k, v in state.items() if not k.startswith("head")}
        model.load_state_dict(own, strict=True)
        return model.eval().requires_grad_(False)

    @property
    def patch(self) -> int:
        return self.patch_embed.proj.kernel_size[0]

    def last_keys(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, tokens, dim) keys of the last block, CLS first."""
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"structure distance: {x.shape[1] - 1} patches but the DINO model was trained "
                             f"on {self.pos_embed.shape[1] - 1}; PIE-Bench images are square (512x512).")
        x = x + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        dim = x.shape[-1]
        return self.blocks[-1].qkv(x)[..., dim:2 * dim]


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_LAYER = {  # transformers ViT names (4.x, then 5.x) -> DINO's, per block
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_BLOCK = re.compile(r"^(encoder\.layer|layers)\.(\d+)\.")
_HF_QKV = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
           ("attention.q_proj", "attention.k_proj", "attention.v_proj"))


def from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ViT state dict (e.g. a saved ``facebook/dino-vitb8``) in DINO's names (q, k, v
    fused)."""
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    out = {"cls_token": state["embeddings.cls_token"], "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    blocks = {(m.group(1), int(m.group(2))) for m in map(_HF_BLOCK.match, state) if m}
    for prefix, i in ((f"{name}.{i}", i) for name, i in blocks):
        for src, dst in _HF_LAYER.items():
            for kind in ("weight", "bias"):
                if f"{prefix}.{src}.{kind}" in state:
                    out[f"blocks.{i}.{dst}.{kind}"] = state[f"{prefix}.{src}.{kind}"]
        names = next(n for n in _HF_QKV if f"{prefix}.{n[0]}.weight" in state)
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{prefix}.{n}.{kind}"] for n in names])
    return out


def load_dino(path: Path) -> DinoViT:
    """The DINO ViT from ``path``: DINO's ``dino_vitbase8_pretrain.pth`` (or a .safetensors twin),
    or a transformers folder of the same network (``facebook/dino-vitb8`` saved with save_pretrained)."""
    path = Path(path).expanduser()
    file = dino_file(path)
    if file is None:
        raise FileNotFoundError(f"structure distance needs {DINO_FILE} (or its .safetensors twin, or a "
                                f"transformers folder of facebook/dino-vitb8) in {path}.")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file), device="cpu")
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("teacher"), dict):  # a full training checkpoint
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state["teacher"].items()}
    if any(k.removeprefix("vit.").startswith("embeddings.") for k in state):
        state = from_transformers(state)
    return DinoViT.from_state_dict(state, str(file))


def dino_file(path: Path) -> Path | None:
    """The checkpoint file at ``path`` (a file, or a folder holding it), or None."""
    if path.is_file():
        return path
    for name in (DINO_FILE, Path(DINO_FILE).with_suffix(".safetensors").name):
        if (path / name).is_file():
            return path / name
    if (path / "config.json").is_file():
        return next((path / w for w in HF_WEIGHTS if (path / w).is_file()), None)
    return None


def dino_pixels(image: np.ndarray, mask: np.ndarray | None = None, antialias: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 (times an (H, W) or (H, W, 3) 0/1 mask) -> (1, 3, h, w) DINO input (see module doc)."""
    x = image.astype(np.float32)
    if mask is not None:
        x = x * (mask if mask.ndim == 3 else mask[..., None]).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    h, w = t.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_short, new_long = DINO_SIZE, int(DINO_SIZE * long / short)
    size = (new_short, new_long) if h <= w else (new_long, new_short)
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def key_self_similarity(model: DinoViT, pixels: torch.Tensor) -> torch.Tensor:
    """(1, tokens, tokens) cosine self-similarity of the last block's keys."""
    keys = model.last_keys(pixels.to(next(model.parameters()).device))
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp_min(COSINE_EPS)


@torch.no_grad()
def structure_distance(model: DinoViT, edited: np.ndarray, photo: np.ndarray, mask: np.ndarray | None = None,
                       antialias: bool = False) -> float:
    """PnPInversion's structure distance between two uint8 images (both multiplied by ``mask`` if given)."""
    a = key_self_similarity(model, dino_pixels(photo, mask, antialias))
    b = key_self_similarity(model, dino_pixels(edited, mask, antialias))
    value = F.mse_loss(b, a).item()
    return value if math.isfinite(value) else math.nan
