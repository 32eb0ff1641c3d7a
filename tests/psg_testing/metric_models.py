"""Tiny stand-ins for the metric models (no weights can be downloaded in tests).

``save_tiny_clip(folder)``: a random 2-layer CLIP (hidden 32, projection 16, 32 px images)
with the SD1 tokenizer that ships with ComfyUI (a byte-level stand-in without a host), saved as a
transformers folder, i.e. what
``models/clip_score/<name>/`` holds for a real CLIP.
``save_random_alexnet(folder)``: a seeded random AlexNet backbone under torchvision's file
name, i.e. what ``models/lpips/`` holds for the PSG LPIPS Loader.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD1_TOKENIZER = Path("~/ComfyUI/comfy/sd1_tokenizer").expanduser()
ALEX_FILE = "alexnet-owt-7be5be79.pth"


def tokenizer_dir() -> Path | None:
    """The SD1 CLIP tokenizer files of the ComfyUI source tree in use, if present."""
    from psg_testing.host import find_comfyui_root

    root = find_comfyui_root()
    for candidate in ([root / "comfy" / "sd1_tokenizer"] if root else []) + [SD1_TOKENIZER]:
        if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
            return candidate
    return None


def byte_level_tokenizer_files(folder: Path) -> Path:
    """CLIP tokenizer files with no merges: every byte is a token (with and without the word-end
    mark), so any text tokenizes; for tests that run without ComfyUI's tokenizer files."""
    import json

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    # byte-level BPE's alphabet: printable bytes stand for themselves, the others map past 255
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP model + processor into ``folder``."""
    import transformers

    tok_dir = tokenizer_dir() or byte_level_tokenizer_files(folder / "byte_tokenizer")
    tok = transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32})
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = transformers.CLIPConfig(
        text_config={**tiny, "vocab_size": tok.vocab_size, "max_position_embeddings": 77,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        transformers.CLIPModel(cfg).eval().save_pretrained(folder)
    transformers.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


def save_random_backbone(folder: Path, architecture: str, file_name: str, seed: int = 0) -> Path:
    """A seeded RANDOM torchvision ``architecture``'s ``features`` state dict under ``file_name``
    (what LPIPS reads from torchvision's checkpoint of that network)."""
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        features = getattr(torchvision.models, architecture)(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / file_name)
    return folder / file_name


def save_random_alexnet(folder: Path, seed: int = 0) -> Path:
    """A seeded random AlexNet ``features`` state dict under torchvision's checkpoint name."""
    return save_random_backbone(folder, "alexnet", ALEX_FILE, seed)
