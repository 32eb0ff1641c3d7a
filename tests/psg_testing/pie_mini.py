"""A generated PIE-Bench-format mini set, and random-weight stand-ins for the evaluation models.

``write_mini_pie(root)`` writes ``root/mapping_file.json`` + ``root/annotation_images/`` with
three real photos (scikit-image samples, 512x512 JPEG) in three editing types, prompts with
P2P brackets, and RLE masks that exercise the decoder: a run past the end of the image, an
empty mask (only the forced border is "edited") and a run touching the border.

The model writers produce RANDOM-WEIGHT models under the real file names: they prove plumbing
and conventions, never quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 512
N = SIZE * SIZE
SQUEEZE_FILE = "squeezenet1_1-b8a52dc0.pth"
DINO_FILE = "dino_vitbase8_pretrain.pth"


def rect_runs(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """RLE runs of the rectangle [x0, x1) x [y0, y1) (one run per row)."""
    runs = []
    for y in range(y0, y1):
        runs += [y * SIZE + x0, x1 - x0]
    return runs


RECORDS = {
    "000000000001": {
        "image_path": "0_random_140/000000000001.jpg", "sample": "chelsea", "editing_type_id": "0",
        "original_prompt": "a [cat] lying on a rug", "editing_prompt": "a [tiger] lying on a rug",
        "editing_instruction": "Make the cat a tiger", "blended_word": "cat tiger",
        # a rectangle, then a run starting on the last row that goes past the end of the image
        "mask": rect_runs(150, 100, 350, 300) + [N - 100, 400],
    },
    "100000000002": {
        "image_path": "1_change_object_80/100000000002.jpg", "sample": "coffee", "editing_type_id": "1",
        "original_prompt": "a cup of [coffee] on a saucer", "editing_prompt": "a cup of [tea] on a saucer",
        "editing_instruction": "Change the coffee into tea", "blended_word": "coffee tea",
        "mask": rect_runs(0, 200, 300, 420),  # touches the left border
    },
    "900000000003": {
        "image_path": "9_change_style_80/900000000003.jpg", "sample": "astronaut", "editing_type_id": "9",
        "original_prompt": "a photo of an astronaut",
        "editing_prompt": "a [watercolor painting] of an astronaut",
        "editing_instruction": "Make it a watercolor painting", "blended_word": "",
        "mask": [],  # nothing marked: only the forced border counts as edited
    },
}


def square_sample(name: str, size: int = SIZE) -> np.ndarray:
    import skimage.data

    array = getattr(skimage.data, name)()
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(array[top:top + side, left:left + side]).convert("RGB").resize((size, size))
    return np.asarray(img)


def write_mini_pie(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for key, rec in RECORDS.items():
        path = root / "annotation_images" / rec["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(square_sample(rec["sample"])).save(path, quality=95)
        mapping[key] = {k: v for k, v in rec.items() if k != "sample"}
    (root / "mapping_file.json").write_text(json.dumps(mapping, indent=1), encoding="utf-8")
    return root


def save_random_squeezenet(folder: Path, seed: int = 0) -> Path:
    """A seeded RANDOM SqueezeNet 1.1 ``features`` state dict under torchvision's file name."""
    from psg_testing.metric_models import save_random_backbone

    return save_random_backbone(folder, "squeezenet1_1", SQUEEZE_FILE, seed)


def random_timm_dino(seed: int = 0, dim: int = 16, depth: int = 12):
    """A RANDOM DINO-shaped ViT (patch 8, 224 px, qkv bias, LayerNorm eps 1e-6) built by timm."""
    from functools import partial

    import timm.models.vision_transformer as vit

    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        model = vit.VisionTransformer(img_size=224, patch_size=8, embed_dim=dim, depth=depth, num_heads=1,
                                      mlp_ratio=2.0, qkv_bias=True, num_classes=0,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        for name, p in model.named_parameters():  # timm zero-inits biases / cls; make every tensor matter
            if name.endswith("bias") or "token" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def save_random_dino(folder: Path, seed: int = 0) -> Path:
    """The timm model's state dict under DINO's ViT-B/8 file name (RANDOM weights, 16 wide)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in random_timm_dino(seed).state_dict().items()}
    torch.save(state, folder / DINO_FILE)
    return folder / DINO_FILE
