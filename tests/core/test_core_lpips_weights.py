"""load_lpips: offline backbone lookup, tensor-only loading, and the missing-file message."""

from __future__ import annotations

import argparse
from pathlib import Path

import lpips
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from psg_core.lpips_weights import BACKBONE_FILES, backbone_url, load_lpips

TORCHVISION = {"alex": torchvision.models.alexnet, "squeeze": torchvision.models.squeezenet1_1}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty hub cache and a network that fails the test if anything tries to use it."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        pytest.fail(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub


def _random_backbone(net: str, seed: int) -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision network's checkpoint (features only: what LPIPS uses)."""
    torch.manual_seed(seed)
    return {f"features.{k}": v for k, v in TORCHVISION[net]().features.state_dict().items()}


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_finds_backbone_in_models_folder_and_loads_its_weights(tmp_path, net):
    folder = tmp_path / "models" / "lpips"
    folder.mkdir(parents=True)
    state = _random_backbone(net, seed=3)
    torch.save(state, folder / BACKBONE_FILES[net])

    model = load_lpips(net, [tmp_path / "elsewhere", folder])

    loaded = model.net.state_dict()
    assert loaded, "empty backbone"
    for key, value in loaded.items():
        assert torch.equal(value, state["features." + key.split(".", 1)[1]]), key
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_heads_are_the_packaged_ones(tmp_path):
    torch.save(_random_backbone("squeeze", seed=0), tmp_path / BACKBONE_FILES["squeeze"])
    model = load_lpips("squeeze", [tmp_path])
    heads = torch.load(Path(lpips.__file__).parent / "weights/v0.1/squeeze.pth", map_location="cpu",
                       weights_only=True)
    for key, value in heads.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_hub_cache_is_searched_and_safetensors_accepted(offline, tmp_path):
    offline.joinpath("checkpoints").mkdir(parents=True)
    state = _random_backbone("squeeze", seed=1)
    torch.save(state, offline / "checkpoints" / BACKBONE_FILES["squeeze"])
    from_hub = load_lpips("squeeze", [tmp_path / "empty"])
    assert torch.equal(from_hub.net.slice1[0].weight, state["features.0.weight"])

    folder = tmp_path / "st"
    folder.mkdir()
    other = _random_backbone("squeeze", seed=2)
    save_file(other, str(folder / BACKBONE_FILES["squeeze"].replace(".pth", ".safetensors")))
    from_st = load_lpips("squeeze", folder)
    last = "features.12.expand3x3.weight"
    assert torch.equal(from_st.net.state_dict()["slice7.12.expand3x3.weight"], other[last])
    assert not torch.equal(other[last], state[last])


def test_missing_backbone_raises_clear_error_without_network(offline, tmp_path):
    searched = tmp_path / "models" / "lpips"
    with pytest.raises(FileNotFoundError) as info:
        load_lpips("vgg", [searched])
    message = str(info.value)
    assert BACKBONE_FILES["vgg"] in message
    assert str(searched) in message and str(offline / "checkpoints") in message
    assert backbone_url("vgg") in message
    assert "models/lpips" in message


def test_wrong_checkpoint_and_unknown_net_are_rejected(tmp_path):
    torch.save(_random_backbone("squeeze", seed=0), tmp_path / BACKBONE_FILES["alex"])  # wrong network
    with pytest.raises(ValueError, match="not torchvision's backbone"):
        load_lpips("alex", [tmp_path])
    with pytest.raises(ValueError, match="Unknown LPIPS network"):
        load_lpips("resnet", [tmp_path])


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"features.0.weight": argparse.Namespace(note="arbitrary pickled object")},
               tmp_path / BACKBONE_FILES["alex"])
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_lpips("alex", [tmp_path])
