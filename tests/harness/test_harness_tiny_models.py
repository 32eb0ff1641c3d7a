"""The tiny model builders: seeded, fully initialised, and usable with autograd."""

from __future__ import annotations

import pytest
import torch
from psg_testing.tiny_models import FAMILIES, LATENT_CHANNELS


def all_tensors(tiny) -> dict[str, torch.Tensor]:
    parts = {
        "model": tiny.model.model,
        "clip": tiny.clip.cond_stage_model,
        "vae": tiny.vae.first_stage_model,
    }
    return {
        f"{part}.{name}": tensor
        for part, module in parts.items()
        for name, tensor in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items()
    }


def test_same_seed_gives_identical_models_and_other_seed_does_not(tiny_models):
    first = all_tensors(tiny_models("sd15", seed=5, cached=False))
    again = all_tensors(tiny_models("sd15", seed=5, cached=False))
    other = all_tensors(tiny_models("sd15", seed=6, cached=False))

    assert first.keys() == again.keys()
    # Uninitialised (torch.empty) storage would not repeat across two builds.
    assert all(torch.equal(first[name], again[name]) for name in first)
    matrices = [name for name, tensor in first.items() if tensor.ndim >= 2]
    assert all(not torch.equal(first[name], other[name]) for name in matrices)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_finite_normal_tensors_with_unit_norm_scales(tiny_models, family):
    tiny = tiny_models(family)
    tensors = all_tensors(tiny)

    assert all(torch.isfinite(tensor).all() for tensor in tensors.values())
    assert not any(tensor.is_inference() for tensor in tensors.values())
    norm_scales = [
        tensor
        for name, tensor in tensors.items()
        if "norm" in name and name.endswith(".weight") and tensor.ndim == 1
    ]
    assert norm_scales and all(torch.equal(scale, torch.ones_like(scale)) for scale in norm_scales)
    assert tiny.vae.latent_channels == LATENT_CHANNELS[family]


@pytest.mark.parametrize("family", ["sd15", "flow"])
def test_gradients_reach_latent_and_text_embedding(tiny_models, family):
    import comfy.model_management

    tiny = tiny_models(family)
    with torch.inference_mode():  # as inside a node: encoder outputs are inference tensors
        cond, pooled = tiny.clip.encode_from_tokens(tiny.clip.tokenize("a cat"), return_pooled=True)
    comfy.model_management.load_models_gpu([tiny.model, tiny.vae.patcher])

    with torch.inference_mode(False), torch.enable_grad():
        latent = torch.randn(1, tiny.latent_channels, 16, 16, requires_grad=True)
        embedding = cond.clone().requires_grad_()
        extra = {"y": pooled.clone()} if family == "flow" else {}
        sigma = torch.tensor([1.0])
        x0 = tiny.model.model.apply_model(latent, sigma, c_crossattn=embedding, **extra)
        image = tiny.vae.first_stage_model.decode(tiny.model.model.process_latent_out(x0))
        image.square().mean().backward()

    assert image.shape == (1, 3, 128, 128)
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
