"""Reliability and safety through real ComfyUI: a bad-input matrix over the HTTP API,
interrupts in every phase, a short soak, no unsafe deserialisation or path traversal, and
bitwise determinism across runs and a server restart.

Every bad input must end in ONE short execution error (or ComfyUI's own validation rejection)
that names the PSG node and says what to change, and the server must then run the next prompt.
"""

from __future__ import annotations

import ast
import functools
import gc
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from psg_testing import host
from psg_testing.host import PromptInterrupted, PromptValidationError
from psg_testing.host_server import ComfyServer
from psg_testing.model_folders import extra_model_folder
from psg_testing.reliability import PHOTO_BIG, PHOTO_ODD, STEPS, PSGGraph, prepare_base_dir
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 600
MAX_MESSAGE_LINES = 6
INVERSIONS = "psg_inversions"
CLIP_NO_WEIGHTS = "psg_rel_clip_without_weights"


# --------------------------------------------------------------------------- helpers


def assert_readable(message: str, node: str, *hints: str) -> None:
    """Short, names the node and what to change, and is not a traceback."""
    assert node in message, f"{node!r} not named in: {message}"
    for hint in hints:
        assert hint.lower() in message.lower(), f"{hint!r} not in: {message}"
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters: {message}"
    assert len(message.strip().splitlines()) <= MAX_MESSAGE_LINES, message
    for trace_marker in ("Traceback", 'File "', '.py", line'):
        assert trace_marker not in message, f"traceback-like text {trace_marker!r} in: {message}"


def execution_errors(entry: dict) -> list[dict]:
    return [data for event, data in entry["status"]["messages"] if event == "execution_error"]


def run_expecting_one_error(server: ComfyServer, prompt: dict) -> dict:
    """Queue ``prompt``; it must fail with exactly one execution_error, returned."""
    entry = server.wait(server.post_prompt(prompt), check=False)
    errors = execution_errors(entry)
    assert len(errors) == 1, f"expected one execution error, got {entry['status']}"
    return errors[0]


def inversion_dir(base_dir: Path) -> Path:
    return base_dir / "output" / INVERSIONS


def write_inversion(path: Path, *, drop: str | None = None, meta: dict[str, str] | None = None,
                    latents_shape: tuple[int, ...] | None = None) -> None:
    """A hand-made saved inversion (valid unless told otherwise), to corrupt one thing at a time."""
    shape = (1, 4, 8, 8)
    tensors = {"sigmas": torch.linspace(0, 14, STEPS + 1),
               "latents": torch.zeros(latents_shape or (STEPS + 1, *shape))}
    metadata = {"format": "psg_inversion", "version": "1", "family": "SD15/EPS/SD15", "space": "VE",
                "scheduler": "simple", "steps": str(STEPS), "latent_shape": json.dumps(list(shape)),
                "inversion_cfg": "1.0", "mode": "", "guidance_scale": ""}
    metadata.update(meta or {})
    if drop:
        metadata.pop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def saved_latent(server: ComfyServer, saved: dict) -> torch.Tensor:
    """The tensor of a latent the server saved (``saved`` as in a node's ui ``latents``)."""
    path = server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"]


def write_latent(path: Path, value: float) -> None:
    """A ComfyUI .latent file (what SaveLatent writes) filled with ``value`` in one corner."""
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latent[..., :2, :2] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latent_tensor": latent, "latent_format_version_0": torch.tensor([])}, str(path))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(comfy_server: ComfyServer) -> ComfyServer:
    """The session server with the photos, an LPIPS backbone, NaN/inf latents and a saved inversion."""
    base = comfy_server.base_dir
    prepare_base_dir(base)
    write_latent(base / "input" / "psg_rel_nan.latent", float("nan"))
    write_latent(base / "input" / "psg_rel_inf.latent", float("inf"))
    clip_dir = base / "models" / "clip_score" / CLIP_NO_WEIGHTS  # listed (has config.json), cannot load
    clip_dir.mkdir(parents=True, exist_ok=True)
    (clip_dir / "config.json").write_text('{"model_type": "clip"}')
    graph = PSGGraph()
    save = graph.node("PSGSaveInversion", inversion=graph.inversion().out(0), filename_prefix="psg_rel/good")
    entry = comfy_server.run(graph.prompt())
    comfy_server.saved_inversion = entry["outputs"][save.id]["text"][0]  # type: ignore[attr-defined]
    folder = inversion_dir(base) / "psg_rel"
    (folder / "garbage.safetensors").write_bytes(b"\x00\xffnot a safetensors file" * 10)
    (folder / "huge_header.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    write_inversion(folder / "no_format.safetensors", drop="format")
    write_inversion(folder / "bad_shape_json.safetensors", meta={"latent_shape": "[1, 4, oops"})
    write_inversion(folder / "inconsistent.safetensors", latents_shape=(STEPS, 1, 4, 8, 8))
    write_inversion(folder / "future_version.safetensors", meta={"version": "99"})
    write_inversion(base / "outside.safetensors")
    return comfy_server


_good_seed = iter(range(1000, 10**6))


def assert_serves_next_prompt(server: ComfyServer) -> None:
    """A full one-node edit (fresh seed, so it really executes) succeeds with a finite result."""
    graph = PSGGraph()
    preview = graph.preview(graph.edit(seed=next(_good_seed)).out(2))
    entry = server.run(graph.prompt())
    losses = [float(v) for v in entry["outputs"][preview.id]["text"]]
    assert losses and all(v == v for v in losses), losses


# --------------------------------------------------------------------------- the bad-input matrix


@dataclass(frozen=True)
class BadInput:
    """One row of the matrix: a graph builder and what the single error must say."""

    name: str
    build: Callable[[ComfyServer], dict]
    node: str
    hints: tuple[str, ...] = field(default_factory=tuple)


def _sampler_from(latent_of: Callable[[PSGGraph], object]) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        inv = graph.inversion()
        run = graph.sample(inv, latent_of(graph))
        graph.preview(run.out(0))
        return graph.prompt()

    return build


def _bigger_latent(graph: PSGGraph) -> object:
    big = graph.node("LoadImage", image=PHOTO_BIG)
    return graph.node("VAEEncode", pixels=big.out(0), vae=graph.ck.out(2)).out(0)


def _batch_of_two(graph: PSGGraph) -> object:
    return graph.node("RepeatLatentBatch", samples=graph.latent.out(0), amount=2).out(0)


def _edit_with(**overrides: object) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        graph.preview(graph.edit(**overrides).out(2))
        return graph.prompt()

    return build


def _edit_on_image(photo: str) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        graph.preview(graph.edit(graph.node("LoadImage", image=photo).out(0)).out(2))
        return graph.prompt()

    return build


def _load(file: str | None = None, *, family: str = "sd15", steps: int = 0,
          photo: str | None = None) -> Callable[[ComfyServer], dict]:
    def build(server: ComfyServer) -> dict:
        graph = PSGGraph(family)
        inputs: dict[str, object] = {"file": file or server.saved_inversion, "model": graph.ck.out(0),
                                     "steps": steps}
        if photo is not None:
            image = graph.node("LoadImage", image=photo)
            inputs["latent"] = graph.node("VAEEncode", pixels=image.out(0), vae=graph.ck.out(2)).out(0)
        graph.preview(graph.node("PSGLoadInversion", **inputs).out(1))
        return graph.prompt()

    return build


def _invert_latent_file(name: str) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        latent = graph.node("LoadLatent", latent=name)
        graph.preview(graph.inversion(latent.out(0)).out(1))
        return graph.prompt()

    return build


def _edit_decoded_latent_file(name: str) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        loaded = graph.node("LoadLatent", latent=name)
        decoded = graph.node("VAEDecode", samples=loaded.out(0), vae=graph.ck.out(2))
        graph.preview(graph.edit(decoded.out(0)).out(2))
        return graph.prompt()

    return build


def _unsupported_model(_: ComfyServer) -> dict:
    graph = PSGGraph()
    x0 = graph.node("ModelSamplingDiscrete", model=graph.ck.out(0), sampling="x0", zsnr=False)
    graph.preview(graph.inversion(model=x0.out(0)).out(1))
    return graph.prompt()


def _mask_batch_of_two(_: ComfyServer) -> dict:
    graph = PSGGraph()
    two = graph.node("RepeatImageBatch", image=graph.image.out(0), amount=2)
    mask = graph.node("ImageToMask", image=two.out(0), channel="red")
    graph.preview(graph.edit(mask=mask.out(0)).out(2))
    return graph.prompt()


def _lpips(net: str) -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        graph.preview(graph.node("PSGLPIPSLoader", net=net).out(0))
        return graph.prompt()

    return build


def _clip_score(clip_model: str = "none", folder_path: str = "") -> Callable[[ComfyServer], dict]:
    def build(_: ComfyServer) -> dict:
        graph = PSGGraph()
        graph.preview(graph.node("PSGCLIPScore", image=graph.image.out(0), text="a photo of a tiger",
                                 clip_model=clip_model, folder_path=folder_path).out(0))
        return graph.prompt()

    return build


LOAD = "PSG Load Inversion"
SAVE_AGAIN = "save the inversion again"
BAD_INPUTS = [
    BadInput("image_latent_size_mismatch", _sampler_from(_bigger_latent), "PSG", ("same image size",)),
    BadInput("batch_mismatch_inversion_vs_sampler", _sampler_from(_batch_of_two), "PSG", ("batch",)),
    BadInput("image_not_multiple_of_8", _edit_on_image(PHOTO_ODD), "PSG Edit", ("multiple of 8",)),
    BadInput("inversion_other_family", _load(family="sdxl"), LOAD, ("PSG DDIM Inversion again",)),
    BadInput("inversion_other_family_flow", _load(family="flow"), LOAD, ("PSG DDIM Inversion again",)),
    BadInput("inversion_other_latent_size", _load(photo=PHOTO_BIG), LOAD, ("same image size",)),
    BadInput("inversion_other_step_count", _load(steps=STEPS + 3), LOAD, (f"set steps to {STEPS}",)),
    BadInput("unsupported_model_type", _unsupported_model, "PSG DDIM Inversion", ("not supported", "X0")),
    BadInput("missing_lpips_weights", _lpips("squeeze"), "PSG LPIPS Loader",
             ("squeezenet1_1", "models/lpips")),
    BadInput("missing_clip_weights_none_picked", _clip_score(), "PSG CLIPScore",
             ("pick a CLIP model", "clip_score")),
    BadInput("missing_clip_weights_config_only", _clip_score(CLIP_NO_WEIGHTS), "PSG CLIPScore",
             ("could not load", "models/clip_score")),
    BadInput("missing_clip_folder", _clip_score(folder_path="/nonexistent/clip"), "PSG CLIPScore",
             ("does not exist",)),
    BadInput("nan_latent", _invert_latent_file("psg_rel_nan.latent"), "PSG DDIM Inversion", ("NaN",)),
    BadInput("inf_latent", _invert_latent_file("psg_rel_inf.latent"), "PSG DDIM Inversion", ("inf",)),
    BadInput("nan_image", _edit_decoded_latent_file("psg_rel_nan.latent"), "PSG Edit", ("NaN",)),
    BadInput("start_after_end", _edit_with(start=0.8, end=0.2), "PSG Edit", ("start <= end",)),
    BadInput("mask_batch_mismatch", _mask_batch_of_two, "PSG Edit", ("mask", "batch")),
    BadInput("corrupt_garbage_bytes", _load("psg_rel/garbage.safetensors"), LOAD, (SAVE_AGAIN,)),
    BadInput("corrupt_huge_header", _load("psg_rel/huge_header.safetensors"), LOAD, (SAVE_AGAIN,)),
    BadInput("corrupt_no_format", _load("psg_rel/no_format.safetensors"), LOAD, ("not a PSG inversion",)),
    BadInput("corrupt_bad_metadata", _load("psg_rel/bad_shape_json.safetensors"), LOAD, (SAVE_AGAIN,)),
    BadInput("corrupt_inconsistent", _load("psg_rel/inconsistent.safetensors"), LOAD, (SAVE_AGAIN,)),
    BadInput("corrupt_future_version", _load("psg_rel/future_version.safetensors"), LOAD, ("version",)),
    # ComfyUI 0.3.64 does not check schema combo values against their options: the nodes must.
    # A valid inversion waits at the traversal target, so loading it would give another message.
    BadInput("path_traversal_load_inversion", _load("../../outside.safetensors"), LOAD, ("not found",)),
    BadInput("path_traversal_lpips", _lpips("../../models/lpips/alexnet-owt-7be5be79"), "PSG LPIPS Loader",
             ("pick one of",)),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_host_reliability_bad_input_is_one_readable_error(server, case):
    error = run_expecting_one_error(server, case.build(server))
    logger.info("%s -> %s: %s", case.name, error["node_type"], error["exception_message"])
    assert_readable(error["exception_message"], case.node, *case.hints)
    assert server.is_running()
    assert_serves_next_prompt(server)


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [({"scale": -1.0}, "scale"), ({"w_edit": 1e6}, "w_edit"), ({"w_source": -1e6}, "w_source"),
     ({"steps": 0}, "steps"), ({"inner_steps": -3}, "inner_steps"), ({"end": 2.0}, "end")],
    ids=["negative_scale", "huge_w_edit", "huge_negative_w_source", "zero_steps", "negative_inner_steps",
         "end_above_1"],
)
def test_host_reliability_out_of_range_values_are_rejected_by_validation(server, overrides, field_name):
    """The schema's min/max make ComfyUI refuse the prompt before anything runs (HTTP 400)."""
    with pytest.raises(PromptValidationError) as caught:
        server.post_prompt(_edit_with(**overrides)(server))
    errors = [e for info in caught.value.node_errors.values() for e in info["errors"]]
    if field_name in ("steps", "inner_steps"):
        assert len(errors) == 1, errors
        assert errors[0]["extra_info"]["input_name"] == field_name
        assert "than" in errors[0]["message"], errors[0]  # "Value ... smaller/bigger than min/max of ..."
    else:  # FLOAT widgets: the node's validate_inputs owns them (NaN / inf / range), named in each error
        assert errors and all(f"PSG Edit: '{field_name}' is" in e["details"] for e in errors), errors
        assert all("set a number between" in e["details"] for e in errors), errors


@pytest.mark.parametrize(
    "overrides",
    [{"w_edit": 30.0, "w_source": -30.0, "scale": 100.0}, {"w_edit": -30.0, "scale": 0.0},
     {"w_edit": 0.0, "w_source": 0.0, "scale": 100.0, "start": 1.0, "end": 1.0}],
    ids=["extremes", "negative_edit_weight", "zero_weights_degenerate_window"],
)
def test_host_reliability_extreme_allowed_values_give_a_finite_result(server, overrides):
    graph = PSGGraph()
    edit = graph.edit(**overrides)
    graph.node("SaveLatent", samples=edit.out(1), filename_prefix="psg_rel/extreme")
    entry = server.run(graph.prompt())
    (saved,) = entry["outputs"][list(entry["outputs"])[0]]["latents"]
    latent = saved_latent(server, saved)
    assert torch.isfinite(latent).all()


def _edit_latent(server: ComfyServer, tag: str, *, texts: tuple[str, str, str] | None = None,
                 mask: tuple[float, int, int] | None = None, **overrides) -> torch.Tensor:
    """The PSG Edit's latent for one prompt. ``mask`` = (value, width, height): a SolidMask of that
    value, whose left half is 1 when value is -1."""
    graph = PSGGraph(texts=texts)
    if mask is not None:
        value, width, height = mask
        solid = graph.node("SolidMask", value=max(value, 0.0), width=width, height=height)
        if value < 0:
            half = graph.node("SolidMask", value=1.0, width=width // 2, height=height)
            solid = graph.node("MaskComposite", destination=solid.out(0), source=half.out(0), x=0, y=0,
                               operation="add")
        overrides["mask"] = solid.out(0)
    edit = graph.edit(**overrides)
    graph.node("SaveLatent", samples=edit.out(1), filename_prefix=f"psg_rel/tolerated_{tag}")
    entry = server.run(graph.prompt())
    assert entry["status"]["status_str"] == "success"
    (saved,) = [item for out in entry["outputs"].values() for item in out.get("latents", [])]
    return saved_latent(server, saved)


HALF = -1.0
"""``_edit_latent`` mask value: left half 1 (edited), right half 0 (kept)."""


def test_host_reliability_empty_prompts_are_valid_prompts(server):
    latent = _edit_latent(server, "empty", texts=("", "", ""))
    assert torch.isfinite(latent).all()


def test_host_reliability_mask_of_another_size_is_resized_to_the_image(server):
    """A mask of another size and aspect acts as the same mask drawn at the photo's size (64 px): a
    half mask at twice the size (its bilinear resize is exact) as the half mask; a smaller, taller
    all-0 mask as the all-0 mask; a smaller all-1 mask (edit everything) as no perceptual pull."""
    unmasked = _edit_latent(server, "unmasked")
    unguided = _edit_latent(server, "unguided", scale=0.0)
    half = _edit_latent(server, "half_64", mask=(HALF, 64, 64))
    assert not torch.equal(unmasked, unguided), "perceptual guidance changed nothing: the check is void"
    assert not torch.equal(half, unmasked) and not torch.equal(half, unguided), "the mask changed nothing"
    torch.testing.assert_close(_edit_latent(server, "half_128", mask=(HALF, 128, 128)), half)
    torch.testing.assert_close(_edit_latent(server, "keep_16", mask=(0.0, 16, 24)),
                               _edit_latent(server, "keep_64", mask=(0.0, 64, 64)))
    torch.testing.assert_close(_edit_latent(server, "free_16", mask=(1.0, 16, 24)), unguided)


def test_host_reliability_unsupported_model_detection_in_process(comfy_host, tiny_models):
    """detect_family refuses anything that is not EPS / V_PREDICTION / CONST, and non-models."""
    import comfy.model_sampling

    host_module = comfy_host.pack_module().nodes.host
    model = tiny_models("sd15").model.clone()
    assert host_module.detect_family(model, "N").space.name == "VE"
    for sampling in ("EDM", "X0"):
        if not hasattr(comfy.model_sampling, sampling):
            continue

        class Patched(getattr(comfy.model_sampling, sampling), comfy.model_sampling.ModelSamplingDiscrete):
            pass

        patched = model.clone()
        patched.add_object_patch("model_sampling", Patched(model.model.model_config))
        with pytest.raises(ValueError) as caught:
            host_module.detect_family(patched, "PSG DDIM Inversion")
        assert_readable(str(caught.value), "PSG DDIM Inversion", "not supported")
    with pytest.raises(ValueError) as caught:
        host_module.detect_family("not a model", "PSG DDIM Inversion")
    assert_readable(str(caught.value), "PSG DDIM Inversion", "MODEL")


# --------------------------------------------------------------------------- interrupts


@pytest.fixture(scope="module")
def inprocess(comfy_host):
    """The in-process host with the photos, and its LPIPS backbone folder as an extra model path
    (the in-process host keeps ComfyUI's own models/ directory, which must stay untouched)."""
    prepare_base_dir(comfy_host.base_dir)
    with extra_model_folder("lpips", comfy_host.base_dir / "models" / "lpips"):
        yield comfy_host


PHASE_STEPS = 4


@pytest.mark.parametrize("phase", ["inversion", "optimization", "sampling", "decode"])
def test_host_reliability_one_node_edit_interrupt_stops_within_one_step(inprocess, phase, monkeypatch):
    """PSG Edit reports progress per inversion step, per null-text iteration, then per sampling
    step; an interrupt raised at a known event of a phase must stop it before the next event.
    'decode': the interrupt arrives while the final VAE decode runs (no progress there); the edit
    must not return a result, so it is PSG Edit, not a downstream node, that reports it."""
    graph = PSGGraph()
    edit = graph.edit(steps=PHASE_STEPS)
    graph.preview(edit.out(2))
    prompt = graph.prompt()
    total = len(inprocess.run(prompt).progress(edit.id))  # inversion, optimization, sampling
    assert total > 2 * PHASE_STEPS + 2
    stop_at = {"inversion": 2, "optimization": PHASE_STEPS + 2, "sampling": total - PHASE_STEPS + 2,
               "decode": total + 1}[phase]
    seen: list[float] = []
    if phase == "decode":
        import comfy.sd

        decode = comfy.sd.VAE.decode

        def decode_then_interrupt(vae, *args, **kwargs):
            inprocess.interrupt()
            return decode(vae, *args, **kwargs)

        monkeypatch.setattr(comfy.sd.VAE, "decode", decode_then_interrupt)

    def interrupt_at(node_id: str, value: float, total: float) -> None:
        if node_id == edit.id:
            seen.append(value)
            if len(seen) == stop_at:
                inprocess.interrupt()

    with pytest.raises(PromptInterrupted) as caught:
        inprocess.run(prompt, on_progress=interrupt_at)
    assert caught.value.node_id == edit.id, f"stopped in {caught.value.node_type}, not in PSG Edit"
    assert len(seen) == min(stop_at, total), (
        f"{len(seen)} progress events, interrupt at event {stop_at}: {seen}")
    monkeypatch.undo()
    assert len(inprocess.run(prompt).progress(edit.id)) == total  # the next prompt runs in full


def test_host_reliability_interrupted_inversion_writes_no_file(inprocess):
    """Interrupting the inversion feeding PSG Save Inversion leaves nothing in psg_inversions."""
    graph = PSGGraph()
    inv = graph.inversion(steps=PHASE_STEPS)
    graph.node("PSGSaveInversion", inversion=inv.out(0), filename_prefix="psg_rel_interrupt/inv")
    folder = inversion_dir(inprocess.base_dir) / "psg_rel_interrupt"

    def interrupt_at_two(node_id: str, value: float, total: float) -> None:
        if node_id == inv.id and value >= 2:
            inprocess.interrupt()

    with pytest.raises(PromptInterrupted):
        inprocess.run(graph.prompt(), on_progress=interrupt_at_two)
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())
    inprocess.run(graph.prompt())
    assert [p.suffix for p in folder.iterdir()] == [".safetensors"]


def test_host_reliability_failed_save_leaves_no_partial_file(inprocess, monkeypatch):
    """A write that dies half-way (disk full, interrupt) leaves neither the target nor a temp file."""
    storage = inprocess.pack_module().nodes.storage_nodes
    files = inprocess.pack_module().nodes.pipelines.storage
    graph = PSGGraph()
    inv = graph.inversion()
    result = inprocess.run(graph.prompt(), outputs=[inv.id])
    real_save = files.save_file

    def dies_half_way(tensors: dict, path: str, metadata: dict) -> None:
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", dies_half_way)
    folder = inversion_dir(inprocess.base_dir) / "psg_rel_partial"
    with pytest.raises(OSError):
        storage.PSGSaveInversion.execute(result.output(inv.id), "psg_rel_partial/inv")
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


def test_host_reliability_server_interrupt_then_next_prompt(server):
    """Over HTTP: /interrupt at the first websocket progress event of a long inversion; the prompt
    ends interrupted in that node, nothing is saved, and the next prompt runs."""
    graph = PSGGraph()
    inv = graph.inversion(steps=200)
    graph.node("PSGSaveInversion", inversion=inv.out(0), filename_prefix="psg_rel_ws/inv")
    folder = inversion_dir(server.base_dir) / "psg_rel_ws"
    with server.events() as events:
        prompt_id = server.post_prompt(graph.prompt(), client_id=events.client_id)
        events.wait_for("progress", timeout_s=120, where=lambda d: d.get("node") == inv.id)
        server.interrupt()
        with pytest.raises(PromptInterrupted) as caught:
            server.wait(prompt_id)
    assert caught.value.node_id == inv.id
    assert not folder.exists() or not any(folder.iterdir())
    assert_serves_next_prompt(server)


# --------------------------------------------------------------------------- no leaks


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def test_host_reliability_repeated_edits_do_not_accumulate_objects(inprocess):
    """8 queued edits (fresh seeds, so each executes): live tensors and temp/output files stay flat."""
    counts, files = [], []
    for seed in range(8):
        graph = PSGGraph()
        graph.preview(graph.edit(seed=10_000 + seed).out(2))
        inprocess.run(graph.prompt())
        counts.append(_live_tensors())
        files.append(sum(len(list((inprocess.base_dir / d).rglob("*"))) for d in ("temp", "output")))
    logger.info("live tensors after each run: %s; temp+output files: %s", counts, files)
    assert counts[-1] <= counts[1], f"live tensors grew: {counts}"
    assert files[-1] == files[1], f"files grew: {files}"


# --------------------------------------------------------------------------- safety

PACK_DIRS = ("nodes", "psg_core", "psg_eval", "psg_cli")
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _keyword_is_true(call: ast.Call, key: str) -> bool:
    return any(k.arg == key and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def unsafe_uses(source: str, where: str) -> list[str]:
    """Unsafe deserialisation / code execution in Python ``source``: pickle-family imports,
    eval/exec/compile, ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)``,
    ``yaml.load`` / ``yaml.unsafe_load``, ``shell=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{line} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{line} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            attribute = isinstance(func, ast.Attribute)
            name = func.id if isinstance(func, ast.Name) else func.attr if attribute else ""
            owner = func.value.id if attribute and isinstance(func.value, ast.Name) else ""
            is_true = functools.partial(_keyword_is_true, node)
            if isinstance(func, ast.Name) and name in UNSAFE_CALLS:
                found.append(f"{line} {name}()")
            elif name == "load" and owner == "torch" and not is_true("weights_only"):
                found.append(f"{line} torch.load without weights_only=True")
            elif name == "load" and owner in ("np", "numpy") and is_true("allow_pickle"):
                found.append(f"{line} numpy.load(allow_pickle=True)")
            elif owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                found.append(f"{line} yaml.{name}")
            elif is_true("shell"):
                found.append(f"{line} shell=True")
    return found


def test_host_reliability_scanner_catches_unsafe_code():
    bad = ("import pickle\nfrom dill import loads\nimport torch, yaml, numpy as np\ntorch.load('x')\n"
           "torch.load('x', weights_only=False)\neval('1')\nexec('1')\nnp.load('a', allow_pickle=True)\n"
           "yaml.load(s)\nimport subprocess\nsubprocess.run('ls', shell=True)\n")
    assert len(unsafe_uses(bad, "bad.py")) == 9, unsafe_uses(bad, "bad.py")
    good = "import torch\ntorch.load('x', map_location='cpu', weights_only=True)\nmodel.eval()\n"
    assert unsafe_uses(good, "good.py") == []


def test_host_reliability_pack_never_unpickles_or_evaluates():
    files = [host.REPO_ROOT / "__init__.py"]
    for directory in PACK_DIRS:
        files += sorted((host.REPO_ROOT / directory).rglob("*.py"))
    assert len(files) > 10
    found = [hit for path in files for hit in unsafe_uses(path.read_text(encoding="utf-8"),
                                                          str(path.relative_to(host.REPO_ROOT)))]
    assert not found, found


def test_host_reliability_saved_inversion_is_plain_safetensors(server):
    path = inversion_dir(server.base_dir) / server.saved_inversion
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = header.pop("__metadata__")
    assert meta["format"] == "psg_inversion" and meta["version"] == "1" and meta["steps"] == str(STEPS)
    assert {v["dtype"] for v in header.values()} == {"F32"}
    data_len = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
    assert 8 + header_len + data_len == len(raw)


def test_host_reliability_file_names_cannot_leave_comfy_folders(inprocess, tmp_path):
    """'../' in a saved-inversion name, an LPIPS net name or a save prefix never reaches a file
    outside ComfyUI's folders, even when a node is called directly (no combo validation)."""
    pack = inprocess.pack_module().nodes
    base = inprocess.base_dir
    graph = PSGGraph()
    inv = graph.inversion()
    result = inprocess.run(graph.prompt(), outputs=[inv.id, graph.ck.id])
    inversion, model = result.output(inv.id), result.output(graph.ck.id, 0)
    outside = base / "outside.safetensors"
    pack.pipelines.storage.to_file(inversion, str(outside))
    for name in ("../../outside.safetensors", "../outside.safetensors", str(outside)):
        with pytest.raises(ValueError) as caught:
            pack.storage_nodes.PSGLoadInversion.execute(name, model, 0)
        assert_readable(str(caught.value), "PSG Load Inversion", "not found")
    for prefix in ("../../escape", "/tmp/escape"):
        with pytest.raises(ValueError) as caught:
            pack.storage_nodes.PSGSaveInversion.execute(inversion, prefix)
        assert_readable(str(caught.value), "PSG Save Inversion", "filename_prefix")
    assert not list(base.parent.glob("escape*")) and not list(Path("/tmp").glob("escape_*.safetensors"))
    lpips_outside = base / "models_outside" / "alexnet-owt-7be5be79.pth"
    lpips_outside.parent.mkdir(exist_ok=True)
    lpips_outside.write_bytes(b"never read")
    for net in ("../models_outside/alexnet", "../../outside", str(lpips_outside)):
        with pytest.raises(ValueError) as caught:
            pack.lpips_nodes.load(net)
        assert_readable(str(caught.value), "PSG LPIPS Loader", "pick one of")


def test_host_reliability_cli_never_executes_workflow_content(tmp_path):
    """A workflow whose strings are Python code is only ever read as JSON: the CLI runs nothing
    from it (the code would create a marker file) and reports a readable error."""
    from psg_testing.cli_support import img2img_workflow, run_cli, write_json, write_photo

    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    workflow = img2img_workflow()
    workflow["3"]["inputs"]["text"] = payload
    workflow["9"] = {"class_type": payload, "inputs": {"x": payload}, "_meta": {"title": payload}}
    workflow["__import__"] = payload
    path = write_json(tmp_path / "evil.json", workflow)
    proc = run_cli("edit", write_photo(tmp_path / "cat.png"), "--source", "a", "--target", "b",
                   "--workflow", path, "--server", "http://127.0.0.1:9", "--out", tmp_path / "out", "-q")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- determinism


def _deterministic_edit(server: ComfyServer, seed: int) -> tuple[torch.Tensor, list[str]]:
    graph = PSGGraph()
    edit = graph.edit(seed=seed, steps=3)
    save = graph.node("SaveLatent", samples=edit.out(1), filename_prefix="psg_rel_det/edit")
    graph.preview(edit.out(2))
    entry = server.run(graph.prompt())
    (saved,) = entry["outputs"][save.id]["latents"]
    latent = saved_latent(server, saved)
    losses = [text for node_id, out in entry["outputs"].items() if node_id != save.id for text in out["text"]]
    return latent, losses


def test_host_reliability_bitwise_deterministic_across_runs_and_restart(server, comfy_root, tmp_path_factory):
    first, first_losses = _deterministic_edit(server, seed=5)
    _deterministic_edit(server, seed=6)  # evicts the cached edit, so the next one recomputes
    again, again_losses = _deterministic_edit(server, seed=5)
    assert torch.equal(first, again) and first_losses == again_losses
    with ComfyServer.running(tmp_path_factory.mktemp("comfy_server_restart"), comfy_root) as restarted:
        prepare_base_dir(restarted.base_dir)
        fresh, fresh_losses = _deterministic_edit(restarted, seed=5)
    assert torch.equal(first, fresh), float((first - fresh).abs().max())
    assert first_losses == fresh_losses


# --------------------------------------------------------------------------- soak (benchmark smoke)


def test_host_reliability_soak_benchmark_measures_a_short_queue(server):
    """benchmarks/soak.py's measuring code on the session server with 3 queued edits: every run
    gets a peak RSS, the table carries the verdict rows (the 50-run figures are in RESULTS.md)."""
    import importlib

    soak = importlib.import_module("benchmarks.soak")
    files_before = soak.count_files(server.base_dir)
    samples = soak.soak(server, runs=3, timeout_s=120)
    assert [s.index for s in samples] == [1, 2, 3]
    assert all(s.peak_rss >= s.end_rss > 0 and s.fds > 0 for s in samples), samples
    text, ok = soak.table(samples, first=1, settled=0, files_before=files_before)
    assert "server peak RSS" in text and "files in temp/ + output/" in text
    assert ok, text
