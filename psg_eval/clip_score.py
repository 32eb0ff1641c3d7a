"""CLIPScore of an image against a text, from a CLIP model in a local folder (never downloaded).

CLIPScore = 100 * max(cos(image_embedding, text_embedding), 0): the torchmetrics convention
(``torchmetrics.multimodal.CLIPScore``, Hessel et al. 2021 with w = 100), so 0 <= score <= 100.
Embeddings are the projected ones (``get_image_features`` / ``get_text_features``).

The folder is a transformers CLIP directory (``config.json`` + weights + tokenizer and
preprocessor files), e.g. a saved ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

OFFLINE_HINT = (
    "A CLIP model is a transformers folder (config.json, weights, tokenizer, preprocessor_config.json): "
    "save one where there is internet with CLIPModel and CLIPProcessor "
    ".from_pretrained('openai/clip-vit-large-patch14').save_pretrained(DIR). "
    "Nothing is downloaded at run time."
)


@dataclass
class ClipScorer:
    """A loaded CLIP model with its processor; ``score(images, texts)`` gives CLIPScore per item."""

    model: torch.nn.Module
    processor: object
    path: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> projected, L2-normalised embeddings (B, D)."""
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIPScore: images must be (batch, 3, height, width), "
                             f"got {tuple(images.shape)}.")
        pixels = self.processor(images=list(images.detach().float().cpu().clamp(0, 1)),
                                return_tensors="pt", do_rescale=False)["pixel_values"]
        param = next(self.model.parameters())
        with torch.no_grad():
            feats = self.model.get_image_features(pixel_values=pixels.to(param.device, param.dtype))
        return F.normalize(_as_tensor(feats).float(), dim=-1)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> projected, L2-normalised embeddings (N, D); long texts are truncated to CLIP's
        context."""
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True,
                                max_length=max_len)
        with torch.no_grad():
            feats = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                 attention_mask=tokens["attention_mask"].to(self.device))
        return F.normalize(_as_tensor(feats).float(), dim=-1)

    def score(self, images: torch.Tensor, texts: str | Sequence[str]) -> torch.Tensor:
        """CLIPScore per image (B,), 100 * max(cos, 0). One text for all images, or one per image."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) not in (1, images.shape[0]):
            raise ValueError(f"CLIPScore: got {len(texts)} texts for {images.shape[0]} images "
                             "(give 1 or one each).")
        img = self.image_features(images)
        txt = self.text_features(texts).expand(img.shape[0], -1)
        return 100.0 * (img * txt).sum(-1).clamp_min(0.0).cpu()


def _as_tensor(feats: object) -> torch.Tensor:
    """transformers 5 may return a model output object instead of a tensor from get_*_features."""
    if torch.is_tensor(feats):
        return feats
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(feats, attr, None)
        if torch.is_tensor(value):
            return value
    raise TypeError(f"CLIPScore: unexpected feature output {type(feats).__name__}")


def load_clip_scorer(path: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
    """Load a CLIP model + processor from a local folder, offline; clear error when absent."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"CLIPScore: no CLIP model folder at {folder} (no config.json). "
                                f"{OFFLINE_HINT}")
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ImportError("CLIPScore needs the `transformers` package (ComfyUI ships it); "
                          "install it with `pip install transformers`.") from err
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0].replace(str(folder), "it")[:160]
        raise FileNotFoundError(f"CLIPScore: could not load a CLIP model from {folder} ({reason}). "
                                f"{OFFLINE_HINT}") from err
    model = model.to(device).eval()
    logger.info("CLIPScore model loaded from %s", folder)
    return ClipScorer(model=model, processor=processor, path=str(folder))
