"""Shared by the reliability tests (tests/host/test_host_reliability.py) and the soak benchmark
(benchmarks/soak.py): input files a ComfyUI base directory needs, and small PSG graphs in API
format on the tiny test checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from comfy_execution.graph_utils import GraphBuilder

from .cli_support import write_photo
from .metric_models import ALEX_FILE, save_random_alexnet

logger = logging.getLogger(__name__)

SIZE = 64
"""Photo side in pixels: the tiny models run at any multiple of 8; small is fast."""
STEPS = 2
PHOTO = "psg_rel_cat.png"
PHOTO_BIG = "psg_rel_cat_128.png"
PHOTO_ODD = "psg_rel_cat_60.png"


def prepare_base_dir(base_dir: Path) -> None:
    """Photos in ``input/`` and a seeded random AlexNet backbone in ``models/lpips`` (idempotent)."""
    for name, size in ((PHOTO, SIZE), (PHOTO_BIG, 2 * SIZE), (PHOTO_ODD, SIZE - 4)):
        if not (base_dir / "input" / name).is_file():
            write_photo(base_dir / "input" / name, size, crop=False)
    if not (base_dir / "models" / "lpips" / ALEX_FILE).is_file():
        save_random_alexnet(base_dir / "models" / "lpips")


class PSGGraph:
    """An API-format prompt under construction: tiny checkpoint, three prompts, a photo."""

    def __init__(self, family: str = "sd15", photo: str = PHOTO, *,
                 texts: tuple[str, str, str] | None = None):
        self.g = g = GraphBuilder(prefix="")
        self.ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
        null, source, edit = texts or ("", "a photo of a cat", "a photo of a tiger")
        self.null = g.node("CLIPTextEncode", clip=self.ck.out(1), text=null)
        self.source = g.node("CLIPTextEncode", clip=self.ck.out(1), text=source)
        self.edit_text = g.node("CLIPTextEncode", clip=self.ck.out(1), text=edit)
        self.image = g.node("LoadImage", image=photo)
        self._latent: Any = None
        self._lpips: Any = None

    def node(self, class_type: str, **inputs: Any) -> Any:
        return self.g.node(class_type, **inputs)

    @property
    def latent(self) -> Any:
        if self._latent is None:
            self._latent = self.g.node("VAEEncode", pixels=self.image.out(0), vae=self.ck.out(2))
        return self._latent

    @property
    def lpips(self) -> Any:
        if self._lpips is None:
            self._lpips = self.g.node("PSGLPIPSLoader", net="alex")
        return self._lpips

    def inversion(self, latent: Any = None, *, steps: int = STEPS, model: Any = None) -> Any:
        return self.g.node("PSGDDIMInversion", model=model or self.ck.out(0),
                           latent=latent or self.latent.out(0), source=self.source.out(0), steps=steps,
                           scheduler="simple", cfg=1.0)

    def optimize(self, inversion: Any, *, mode: str = "null-text optimization", inner_steps: int = 2) -> Any:
        return self.g.node("PSGTextGuidanceOptimize", model=self.ck.out(0), inversion=inversion.out(0),
                           source=self.source.out(0), null=self.null.out(0), mode=mode, guidance_scale=3.0,
                           inner_steps=inner_steps, tolerance=1e-5)

    def sample(self, inversion: Any, latent: Any, *, steps: int = STEPS, mask: Any = None,
               scale: float = 1.0) -> Any:
        """Guider + perceptual sampler + SamplerCustomAdvanced from ``latent``; returns the sampler node."""
        g = self.g
        guider = g.node("PSGTriplePromptGuider", model=self.ck.out(0), null=self.null.out(0),
                        source=self.source.out(0), edit=self.edit_text.out(0), w_source=0.0, w_edit=3.0,
                        inversion=inversion.out(0))
        extra = {"mask": mask} if mask is not None else {}
        sampler = g.node("PSGPerceptualSampler", vae=self.ck.out(2), reference=self.image.out(0),
                         lpips=self.lpips.out(0), scale=scale, start=0.0, end=1.0, every=1,
                         gradient="x0 (fast)", inversion=inversion.out(0), **extra)
        sigmas = g.node("BasicScheduler", model=self.ck.out(0), scheduler="simple", steps=steps, denoise=1.0)
        return g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise").out(0), guider=guider.out(0),
                      sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=latent)

    def edit(self, image: Any = None, *, steps: int = STEPS, **overrides: Any) -> Any:
        """The one-node PSG Edit (null-text optimization, perceptual guidance on)."""
        inputs: dict[str, Any] = dict(
            model=self.ck.out(0), vae=self.ck.out(2), image=image or self.image.out(0), null=self.null.out(0),
            source=self.source.out(0), edit=self.edit_text.out(0), lpips=self.lpips.out(0), steps=steps,
            scheduler="simple", w_source=0.0, w_edit=3.0, text_optimization="null-text optimization",
            inner_steps=2, scale=1.0, start=0.0, end=1.0,
        )
        inputs.update(overrides)
        return self.g.node("PSGEdit", **inputs)

    def preview(self, value: Any) -> Any:
        """An output node that shows anything and writes no file (ComfyUI's Preview Any)."""
        return self.g.node("PreviewAny", source=value)

    def prompt(self) -> dict:
        return self.g.finalize()


def soak_prompt(seed: int, guidance_vae: str | None = None) -> dict:
    """One headless edit whose only output is the loss list (no files written by design), so any
    file left in temp/ or output/ after a run is a leak. ``seed`` numbers the edit prompt, so each
    queued run executes (PSG Edit then reuses its inversion from memory, as a user trying edit
    after edit would); ``guidance_vae`` (a VAELoader name such as taesd) is plugged in like the
    shipped workflows do."""
    graph = PSGGraph(texts=("", "a photo of a cat", f"a photo of a tiger, take {seed}"))
    extra = {}
    if guidance_vae:
        extra["guidance_vae"] = graph.node("VAELoader", vae_name=guidance_vae).out(0)
    edit = graph.edit(**extra)
    graph.preview(edit.out(2))
    return graph.prompt()
