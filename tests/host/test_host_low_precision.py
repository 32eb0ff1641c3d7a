"""bfloat16 models through the real host glue: null-text optimization (the embedding is fitted in
float32, the model runs in bfloat16) and both perceptual gradient paths (x0 / through the model)
stay finite and converge on tiny SD1.5- and Flux-shaped models."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest
import torch

STEPS = 4
SCALE = 3.0


def bf16_model(tiny: Any) -> Any:
    """A private bfloat16 copy of a tiny model (the cached fp32 one is left alone)."""
    import comfy.model_management
    import comfy.model_patcher

    with torch.inference_mode(False):
        inner = copy.deepcopy(tiny.model.model)
        inner.diffusion_model.to(torch.bfloat16)
        inner.diffusion_model.dtype = torch.bfloat16
    return comfy.model_patcher.ModelPatcher(inner, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def pack_parts(comfy_host) -> tuple[Any, Any, Any]:
    name = comfy_host.pack_module().__name__
    return tuple(importlib.import_module(f"{name}.{sub}") for sub in
                 ("nodes.host", "nodes.pipelines.inversion", "psg_core"))


def encode(tiny: Any, text: str) -> list:
    with torch.inference_mode():  # as inside a node
        cond, pooled = tiny.clip.encode_from_tokens(tiny.clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def setup(comfy_host, tiny_models, family: str):
    host, inversion_pipeline, core = pack_parts(comfy_host)
    tiny = tiny_models(family)
    model = bf16_model(tiny)
    source, null = encode(tiny, "a photo of a cat"), encode(tiny, "")
    latent = torch.randn(1, tiny.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        inv, _ = inversion_pipeline.invert(model, latent, source, steps=STEPS, scheduler="simple", cfg=1.0,
                                           null=None, node="test")
    return host, inversion_pipeline, core, tiny, model, source, null, inv


def run_body(host: Any, model: Any, inv: Any, source: list, null: list, body) -> None:
    family = host.detect_family(model, "test")
    with torch.inference_mode():
        host.run_on_host(model, {"source": source, "null": null}, torch.zeros(inv.latent_shape), body,
                         family=family, fallback="null", sigmas=inv.sigmas, node="test")


@pytest.mark.parametrize("family", ["sd15", "flow"])
def test_bf16_null_text_is_finite_and_converges(comfy_host, tiny_models, family):
    """Every step's fitted null lands closer to the inverted latent than the null it started from.
    (A random tiny model's CFG drift is mostly out of the null's reach, so this checks the
    direction and the numerics, not the analytic benchmark's fraction.)"""
    host, inversion_pipeline, core, tiny, model, source, null, inv = setup(comfy_host, tiny_models, family)
    null_text = importlib.import_module(f"{core.__name__}.null_text")
    ddim = importlib.import_module(f"{core.__name__}.ddim")
    guidance = importlib.import_module(f"{core.__name__}.guidance")
    seen: dict[str, Any] = {"steps": [], "landing": []}

    def body(h):
        traj = inversion_pipeline.trajectory_on(inv, h.device)
        src, nul = h.bank.embeddings["source"], h.bank.embeddings["null"]
        h.enable_model_gradients()
        with torch.enable_grad():
            nulls = null_text.optimize_null_text(h.denoise, traj, src, nul, guidance_scale=SCALE,
                                                 callback=lambda j, n, x, x0: seen["steps"].append(j))
        g = guidance.TextGuidance(nul, src, src, w_source=SCALE, w_edit=0.0)
        x, n = traj.noise, traj.steps
        for j in range(n):
            s, s_next, target = traj.sigmas[n - j], traj.sigmas[n - j - 1], traj.latents[n - j - 1]
            sigma = ddim.sigma_batch(s, x)
            with torch.no_grad():
                lands = [ddim.ddim_step(x, s, s_next, g.combine(h.denoise(x, sigma, g.conds(e))),
                                        h.family.space)
                         for e in (nul, nulls[j])]
            seen["landing"].append([float((p - target).norm() / target.norm()) for p in lands])
            x = lands[1]
        seen["nulls"], seen["end"] = nulls, x
        return h.latent

    run_body(host, model, inv, source, null, body)
    assert sorted(set(seen["steps"])) == list(range(STEPS))
    assert all(n.dtype == torch.float32 and torch.isfinite(n).all() for n in seen["nulls"])
    assert torch.isfinite(seen["end"]).all()
    print(f"\n{family} bf16, relative landing error per step (start null -> fitted): "
          + ", ".join(f"{a:.3f} -> {b:.3f}" for a, b in seen["landing"]))
    assert all(b < a for a, b in seen["landing"])


@pytest.mark.parametrize("through_model", [False, True], ids=["x0", "through_model"])
def test_bf16_perceptual_paths_are_finite_and_pull_towards_the_photo(comfy_host, tiny_models, through_model):
    host, inversion_pipeline, core, tiny, model, source, null, inv = setup(comfy_host, tiny_models, "sd15")
    ddim = importlib.import_module(f"{core.__name__}.ddim")
    guidance = importlib.import_module(f"{core.__name__}.guidance")
    perceptual = importlib.import_module(f"{core.__name__}.perceptual")
    losses = importlib.import_module(f"{core.__name__}.losses")
    results: dict[float, Any] = {}

    def body(h):
        traj = inversion_pipeline.trajectory_on(inv, h.device)
        src, nul = h.bank.embeddings["source"], h.bank.embeddings["null"]
        decode = host.DifferentiableDecoder(tiny.vae, h.process_latent_out, "test")
        with torch.no_grad():
            photo = decode(traj.latents[0]).clamp(0, 1)
        if through_model:
            h.enable_model_gradients()
        g = guidance.TextGuidance(nul, src, src, w_source=0.0, w_edit=SCALE)
        for scale in (0.0, 2.0):
            hook = perceptual.PerceptualGuidance(decode, photo, loss=losses.ImageLoss(None, mse_weight=1.0),
                                                 scale=scale, through_model=through_model)
            out = ddim.ddim_sample(h.denoise, traj.noise, traj.sigmas.flip(0), g, space=h.family.space,
                                   perceptual=hook)
            with torch.no_grad():
                results[scale] = (out, float((decode(out) - photo).pow(2).mean()), list(hook.losses))
        return h.latent

    run_body(host, model, inv, source, null, body)
    (_, plain_loss, _), (guided, guided_loss, recorded) = results[0.0], results[2.0]
    assert torch.isfinite(guided).all()
    assert all(torch.isfinite(torch.tensor(v)) for v in recorded)
    print(f"\nbf16 {'DPS' if through_model else 'MPGD'}: MSE to photo {plain_loss:.5f} unguided -> "
          f"{guided_loss:.5f}")
    assert guided_loss < plain_loss
