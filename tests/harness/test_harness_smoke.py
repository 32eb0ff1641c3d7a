"""The harness itself, end to end: tiny models through ComfyUI's real executor and server.

These double as examples of how host tests are written (GraphBuilder -> comfy_host.run
or comfy_server.post_prompt/wait).
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from PIL import Image
from psg_testing.host import PromptExecutionError, PromptInterrupted, PromptValidationError
from psg_testing.tiny_models import FAMILIES, IMAGE_SIZE

STEPS = 2


def text_to_image_prompt(
    family: str = "sd15", *, seed: int = 1, steps: int = STEPS, model_seed: int = 0
) -> tuple[dict, dict[str, str]]:
    """Tiny checkpoint -> prompts -> KSampler -> VAEDecode -> SaveImage (+ node ids)."""
    graph = GraphBuilder(prefix="")  # plain ids "1", "2", ...: the default prefix depends on history
    checkpoint = graph.node("PSGTestTinyCheckpoint", family=family, seed=model_seed)
    positive = graph.node("CLIPTextEncode", clip=checkpoint.out(1), text="a photo of a cat")
    negative = graph.node("CLIPTextEncode", clip=checkpoint.out(1), text="")
    latent = graph.node("EmptyLatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1)
    if family == "flow":
        latent = graph.node("EmptySD3LatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1)
    sampler = graph.node(
        "KSampler",
        model=checkpoint.out(0),
        positive=positive.out(0),
        negative=negative.out(0),
        latent_image=latent.out(0),
        seed=seed,
        steps=steps,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=1.0,
    )
    decode = graph.node("VAEDecode", samples=sampler.out(0), vae=checkpoint.out(2))
    save = graph.node("SaveImage", images=decode.out(0), filename_prefix=f"psg_smoke_{family}")
    return graph.finalize(), {"sampler": sampler.id, "decode": decode.id, "save": save.id}


# --------------------------------------------------------------------------- in-process


def test_in_process_ksampler_image_is_finite_and_seed_deterministic(comfy_host):
    prompt, ids = text_to_image_prompt(seed=1)
    first = comfy_host.run(prompt).output(ids["decode"])
    again = comfy_host.run(prompt).output(ids["decode"])
    other_seed = comfy_host.run(text_to_image_prompt(seed=2)[0]).output(ids["decode"])

    assert first.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)


def test_in_process_reports_saved_image_and_progress(comfy_host):
    prompt, ids = text_to_image_prompt(steps=3)
    result = comfy_host.run(prompt)

    (saved,) = result.ui[ids["save"]]["images"]
    assert (comfy_host.base_dir / "output" / saved["subfolder"] / saved["filename"]).is_file()
    assert result.progress(ids["sampler"])[-1] == (3, 3)
    assert set(result.executed) == set(prompt)


def test_in_process_reads_inner_node_outputs(comfy_host):
    prompt, ids = text_to_image_prompt()
    result = comfy_host.run(prompt, outputs=[ids["sampler"]])

    assert result.output(ids["sampler"])["samples"].shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert ids["decode"] not in result.executed


def test_in_process_cache_is_kept_only_on_request(comfy_host):
    prompt, ids = text_to_image_prompt()
    comfy_host.run(prompt)
    reused = comfy_host.run(prompt, reuse_cache=True)
    fresh = comfy_host.run(prompt)

    assert ids["sampler"] in reused.cached and ids["sampler"] not in reused.executed
    assert ids["sampler"] in fresh.executed


def test_in_process_validation_error_names_node_and_input(comfy_host):
    prompt, ids = text_to_image_prompt()
    prompt[ids["sampler"]]["inputs"]["steps"] = 0

    with pytest.raises(PromptValidationError) as caught:
        comfy_host.run(prompt)
    assert ids["sampler"] in caught.value.node_errors
    assert "steps" in str(caught.value)


def test_in_process_execution_error_carries_node_and_message(comfy_host):
    prompt, ids = text_to_image_prompt("flow")
    # Decode the flow model's 16-channel latent with the 4-channel sd15 VAE: fails at run time.
    prompt["sd15"] = {"class_type": "PSGTestTinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}}
    prompt[ids["decode"]]["inputs"]["vae"] = ["sd15", 2]

    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(prompt)
    assert caught.value.node_id == ids["decode"]
    assert caught.value.node_type == "VAEDecode"
    assert caught.value.exception_message


def test_in_process_interrupt_stops_sampler_mid_way(comfy_host):
    prompt, ids = text_to_image_prompt(steps=6)
    seen_steps = []

    def stop_after_two(node_id, value, total):
        seen_steps.append(value)
        if value >= 2:
            comfy_host.interrupt()

    with pytest.raises(PromptInterrupted) as caught:
        comfy_host.run(prompt, on_progress=stop_after_two)
    assert caught.value.node_id == ids["sampler"]
    assert max(seen_steps) == 2
    # The flag is cleared for the next prompt.
    assert comfy_host.run(prompt).output(ids["decode"]).shape[0] == 1


def test_in_process_interrupt_from_another_thread(comfy_host):
    prompt, ids = text_to_image_prompt(steps=6)
    sampling = threading.Event()
    interrupted = threading.Event()

    def hold_first_step(node_id, value, total):
        sampling.set()
        interrupted.wait(timeout=30)

    running = comfy_host.start(prompt, on_progress=hold_first_step)
    assert sampling.wait(timeout=60)
    comfy_host.interrupt()
    interrupted.set()
    with pytest.raises(PromptInterrupted):
        running.result(timeout=60)


@pytest.mark.parametrize("family", FAMILIES)
def test_in_process_every_tiny_family_samples(comfy_host, family):
    prompt, ids = text_to_image_prompt(family)
    result = comfy_host.run(prompt)

    latent = result.output(ids["sampler"])["samples"]
    image = result.output(ids["decode"])
    assert latent.shape[1] == (16 if family == "flow" else 4)
    assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert torch.isfinite(latent).all() and torch.isfinite(image).all()


# --------------------------------------------------------------------------- server


def test_server_lists_pack_and_test_nodes(comfy_server):
    info = comfy_server.object_info("PSGTestTinyCheckpoint")
    assert info["PSGTestTinyCheckpoint"]["input"]["required"]["family"]


def test_server_ksampler_image_lands_in_history_and_view(comfy_server):
    prompt, ids = text_to_image_prompt(seed=3)
    entry = comfy_server.wait(comfy_server.post_prompt(prompt), timeout_s=120)

    assert entry["status"]["status_str"] == "success"
    (saved,) = entry["outputs"][ids["save"]]["images"]
    png = Image.open(io.BytesIO(comfy_server.view(**saved)))
    assert png.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.asarray(png).std() > 0


def test_server_rejects_invalid_prompt_with_node_errors(comfy_server):
    prompt, ids = text_to_image_prompt()
    prompt[ids["sampler"]]["inputs"]["sampler_name"] = "no_such_sampler"

    with pytest.raises(PromptValidationError) as caught:
        comfy_server.post_prompt(prompt)
    assert ids["sampler"] in caught.value.node_errors


def test_server_upload_image_feeds_load_image(comfy_server, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "upload.png")
    uploaded = comfy_server.upload_image(tmp_path / "upload.png", subfolder="psg_tests")

    graph = GraphBuilder(prefix="")
    load = graph.node("LoadImage", image=f"{uploaded['subfolder']}/{uploaded['name']}")
    save = graph.node("SaveImage", images=load.out(0), filename_prefix="psg_upload")
    entry = comfy_server.run(graph.finalize())

    (saved,) = entry["outputs"][save.id]["images"]
    round_trip = np.asarray(Image.open(io.BytesIO(comfy_server.view(**saved))).convert("RGB"))
    assert np.array_equal(round_trip, pixels)


def test_server_interrupt_stops_running_prompt(comfy_server):
    prompt, ids = text_to_image_prompt(steps=1000, seed=4)
    with comfy_server.events() as events:
        prompt_id = comfy_server.post_prompt(prompt, client_id=events.client_id)
        # Interrupt once sampling runs: an earlier one is cleared when execution starts.
        events.wait_for("progress", where=lambda data: data.get("prompt_id") == prompt_id)
        comfy_server.interrupt()
        with pytest.raises(PromptInterrupted) as caught:
            comfy_server.wait(prompt_id, timeout_s=120)
    assert caught.value.node_id == ids["sampler"]
