"""DDIM inversion and text-guidance optimization on the host model (``psg_core.ddim_invert`` and
``psg_core.null_text``), shared by the inversion, edit and prompt-to-prompt nodes."""

from __future__ import annotations

from typing import Any

import torch

from ...psg_core.ddim import Trajectory, ddim_invert
from .. import host, validation
from ..psg_types import TEXT_MODE_NAMES, PSGInversion, TextMode, check_matches


def latent_samples(latent: Any, node: str) -> torch.Tensor:
    """The sample tensor of a LATENT, with a clear error for anything else."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4:
        raise ValueError(f"{node}: the 'latent' input must be an image LATENT (e.g. from VAE Encode).")
    validation.check_finite(samples, "latent", node)
    return samples


def invert(
    model: Any,
    samples: torch.Tensor,
    source: Any,
    *,
    steps: int,
    scheduler: str,
    cfg: float,
    null: Any | None,
    node: str,
    fixed_point_iters: int = 0,
) -> tuple[PSGInversion, torch.Tensor]:
    """Run ``psg_core.ddim_invert`` on the host model; shared by the inversion and edit nodes.

    Returns the inversion and the inverted noise as an (outer-space) LATENT sample tensor."""
    family = host.detect_family(model, node)
    sigmas = host.inversion_sigmas(model, scheduler, steps, node)
    use_cfg = null is not None and abs(cfg - 1.0) > 1e-8
    if abs(cfg - 1.0) > 1e-8 and null is None:
        raise ValueError(f"{node}: inversion cfg {cfg} needs the optional 'null' conditioning; "
                         "connect it or set cfg to 1.")
    conds = {"source": source}
    if use_cfg:
        conds["null"] = null
    result: dict[str, Any] = {}

    def body(h: host.HostModel) -> torch.Tensor:
        report = host.StepReporter(model, steps)
        traj = ddim_invert(
            h.denoise,
            h.latent,
            sigmas.to(h.device),
            h.bank.embeddings["source"],
            space=family.space,
            null=h.bank.embeddings["null"] if use_cfg else None,
            guidance_scale=float(cfg) if use_cfg else 1.0,
            fixed_point_iters=int(fixed_point_iters),
            callback=report,
        )
        latents = traj.latents if torch.is_tensor(traj.latents) else torch.stack(list(traj.latents))
        result["latents"] = latents.detach().to("cpu", torch.float32)
        return latents[-1].detach()

    noise = host.run_on_host(model, conds, samples, body, family=family, fallback="source", sigmas=sigmas,
                             node=node)
    inv = PSGInversion(
        family=family.name,
        scheduler=scheduler,
        trajectory=Trajectory(sigmas=sigmas, latents=result["latents"], space=family.space),
        inversion_cfg=float(cfg) if use_cfg else 1.0,
    )
    return inv, noise


def trajectory_on(inv: PSGInversion, device: torch.device) -> Trajectory:
    """The inversion's trajectory on ``device``, for the core's optimizers."""
    traj = inv.trajectory
    return Trajectory(sigmas=traj.sigmas.to(device), latents=traj.latents.to(device), space=traj.space)


def optimize_text(
    model: Any,
    inv: PSGInversion,
    source: Any,
    null: Any,
    *,
    mode: str,
    guidance_scale: float,
    inner_steps: int,
    tolerance: float | None,
    node: str,
    schedule: str = "secant",
) -> PSGInversion:
    """Per-step nulls (null-text / negative prompt) or latent offsets (direct inversion).

    ``tolerance`` is the secant schedule's stop (None: the core's default); the reference schedule
    always uses prompt-to-prompt's own thresholds."""
    from ...psg_core.null_text import (
        NullTextSchedule,
        direct_inversion_offsets,
        negative_prompt_nulls,
        optimize_null_text,
    )
    if schedule not in {s.value for s in NullTextSchedule}:
        raise ValueError(f"{node}: unknown schedule {schedule!r}; pick one of "
                         f"{', '.join(s.value for s in NullTextSchedule)}.")
    fit = NullTextSchedule(schedule)
    family = host.detect_family(model, node)
    check_matches(inv, family.name, node)
    if mode not in TEXT_MODE_NAMES:
        raise ValueError(f"{node}: unknown mode {mode!r}; pick one of {', '.join(TEXT_MODE_NAMES)}.")
    mode = TextMode(mode)
    result: dict[str, Any] = {"nulls": None, "offsets": None}

    def body(h: host.HostModel) -> torch.Tensor:
        traj = trajectory_on(inv, h.device)
        src, nul = h.bank.embeddings["source"], h.bank.embeddings["null"]
        report = host.StepReporter(model, inv.steps)
        if mode is TextMode.NULL_TEXT:
            h.enable_model_gradients()
            with torch.enable_grad():
                result["nulls"] = optimize_null_text(
                    h.denoise, traj, src, nul, guidance_scale=guidance_scale, inner_steps=inner_steps,
                    tol=tolerance if fit is NullTextSchedule.SECANT else None, callback=report, schedule=fit,
                )
        elif mode is TextMode.NEGATIVE_PROMPT:
            result["nulls"] = negative_prompt_nulls(traj, src)
        else:
            result["offsets"] = direct_inversion_offsets(h.denoise, traj, src, nul,
                                                         guidance_scale=guidance_scale, callback=report)
        return h.latent

    zeros = torch.zeros(inv.latent_shape)
    host.run_on_host(model, {"source": source, "null": null}, zeros, body, family=family, fallback="null",
                     sigmas=inv.sigmas, node=node)
    return inv.with_text_guidance(mode, guidance_scale, result["nulls"], result["offsets"])

