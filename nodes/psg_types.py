"""Custom socket types passed between PSG nodes (plain Python objects kept in memory)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch
from comfy_api.latest import io

from ..psg_core.ddim import Trajectory

PSGInversionType = io.Custom("PSG_INVERSION")
PSGLpipsType = io.Custom("PSG_LPIPS")
PSGP2PType = io.Custom("PSG_P2P")
"""Prompt-to-prompt settings (``pipelines.attention_patches.P2PSettings``)."""


class TextMode(str, Enum):
    """How text guidance is made to retrace the inversion (stored in ``PSGInversion.mode`` by value).

    The values are what workflows and inversion files hold; files saved by version 0.1.0 spell the
    null-text mode "null-text optimisation", which still reads as ``NULL_TEXT``."""

    NULL_TEXT = "null-text optimization"  # one optimized null embedding per step (Mokady et al.)
    NEGATIVE_PROMPT = "negative-prompt"  # the source prompt as the null: free
    DIRECT_OFFSETS = "direct offsets"  # the per-step latent drift, added back while sampling

    @classmethod
    def _missing_(cls, value: object) -> TextMode | None:
        return cls.NULL_TEXT if value == "null-text optimisation" else None

    @property
    def needs_scale(self) -> bool:
        """Fitted at a guidance scale: sampling at another w_source + w_edit means fitting again."""
        return self is not TextMode.NEGATIVE_PROMPT


TEXT_MODE_NAMES: list[str] = [m.value for m in TextMode]


@dataclass(frozen=True)
class PSGInversion:
    """A core ``Trajectory`` in the model's latent space (process_latent_in'd), on the CPU, with what
    it was made with and the text guidance fitted to it.

    ``nulls[j]`` / ``offsets[j]`` belong to reverse step j (j = 0 starts at the noisiest latent), as
    returned by the core's optimizers; ``family`` is checked against the model it is used with.
    """

    family: str
    scheduler: str
    trajectory: Trajectory
    inversion_cfg: float = 1.0
    mode: TextMode | None = None
    guidance_scale: float | None = None
    nulls: tuple[torch.Tensor, ...] | None = None
    offsets: tuple[torch.Tensor, ...] | None = None

    @property
    def sigmas(self) -> torch.Tensor:
        """Ascending, ``sigmas[0] == 0``."""
        return self.trajectory.sigmas

    @property
    def latents(self) -> torch.Tensor:
        """(steps + 1, B, C, H, W); ``latents[i]`` lies at ``sigmas[i]``."""
        return self.trajectory.latents

    @property
    def steps(self) -> int:
        return self.trajectory.steps

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.latents.shape[1:])

    @property
    def noise(self) -> torch.Tensor:
        return self.trajectory.noise

    def with_text_guidance(self, mode: TextMode, guidance_scale: float, nulls, offsets) -> PSGInversion:
        return replace(
            self,
            mode=mode,
            guidance_scale=float(guidance_scale),
            nulls=tuple(n.detach().to("cpu") for n in nulls) if nulls is not None else None,
            offsets=tuple(o.detach().to("cpu") for o in offsets) if offsets is not None else None,
        )

    def describe(self) -> str:
        extra = f", {self.mode.value}" if self.mode else ""
        return (f"{self.family}, {self.steps} steps ({self.scheduler}), "
                f"latent {list(self.latent_shape)}{extra}")


def check_matches(inv: PSGInversion, family: str, node: str,
                  latent_shape: tuple[int, ...] | None = None) -> None:
    """Refuse an inversion made with another model family or for another latent size."""
    if not isinstance(inv, PSGInversion):
        raise ValueError(f"{node}: the 'inversion' input is not a PSG_INVERSION "
                         "(connect a PSG DDIM Inversion node).")
    if inv.family != family:
        raise ValueError(
            f"{node}: this inversion was made with a {inv.family} model but the connected model is {family}; "
            "run PSG DDIM Inversion again with this model."
        )
    if latent_shape is not None and tuple(latent_shape) != inv.latent_shape:
        raise ValueError(
            f"{node}: the inversion is for a latent of shape {list(inv.latent_shape)} but got "
            f"{list(latent_shape)}; use the same image size (and batch) as the inversion."
        )
