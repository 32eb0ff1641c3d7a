"""PSG Edit remembers its inversion: changing only sampling knobs (perceptual scale, the edit
prompt) re-runs sampling alone, a new guidance scale re-fits the nulls but keeps the inversion,
a new photo or source prompt inverts again; results from memory are bitwise those of a fresh run.
Each phase announces itself on the node (progress text), and the run's progress events show
which phases ran: STEPS for inversion, STEPS per null-text iteration, STEPS for sampling."""

from __future__ import annotations

import pytest
import torch
from psg_testing.model_folders import extra_model_folder
from psg_testing.reliability import STEPS, PSGGraph, prepare_base_dir

INNER = 2


@pytest.fixture(scope="module")
def inprocess(comfy_host):
    prepare_base_dir(comfy_host.base_dir)
    with extra_model_folder("lpips", comfy_host.base_dir / "models" / "lpips"):
        yield comfy_host


def _prompt(target: str = "a photo of a tiger", source: str = "a photo of a cat",
            **knobs) -> tuple[dict, str]:
    graph = PSGGraph(texts=("", source, target))
    edit = graph.edit(inner_steps=INNER, **knobs)
    graph.preview(edit.out(2))
    return graph.prompt(), edit.id


def _run(host, prompt: dict, edit_id: str):
    """Run keeping PSG Edit's memory (ComfyUI's own output cache stays cleared: the node re-runs)."""
    host.backend.reset_cache()
    result = host.run(prompt, reuse_cache=True)
    texts = [d["text"] for e, d in result.events if e == "progress_text" and d["node"] == edit_id]
    return result, len(result.progress(edit_id)), texts


def test_host_edit_reuses_its_inversion_when_only_sampling_knobs_change(inprocess):
    memory = inprocess.pack_module().nodes.inversion_cache.INVERSIONS
    memory.clear()
    first_prompt, edit_id = _prompt(scale=1.0)
    first, full, texts = _run(inprocess, first_prompt, edit_id)
    assert full >= STEPS + STEPS + STEPS, "inversion, text optimization and sampling all report"
    assert any(t.startswith("DDIM inversion") for t in texts) and any(t.startswith("text optimization")
                                                                        for t in texts), texts

    scaled_prompt, _ = _prompt(scale=2.0)
    scaled, count, texts = _run(inprocess, scaled_prompt, edit_id)
    assert count == STEPS, f"only the {STEPS} sampling steps should run, saw {count} progress events"
    assert any(t.startswith("reusing the inversion") for t in texts), texts
    assert edit_id in scaled.executed

    retarget, _ = _prompt(target="a photo of a dog", scale=2.0)
    assert _run(inprocess, retarget, edit_id)[1] == STEPS

    refit, _ = _prompt(scale=2.0, w_edit=5.0)  # null-text nulls are fitted at w_source + w_edit
    _, count, texts = _run(inprocess, refit, edit_id)
    assert count == full - STEPS, "the inversion is reused, the optimization runs again"
    assert any(t.startswith("reusing the DDIM inversion") for t in texts), texts

    other_source, _ = _prompt(source="a photo of a kitten", scale=2.0)
    assert _run(inprocess, other_source, edit_id)[1] == full

    # what came from memory is what a fresh run computes
    fresh = inprocess.run(scaled_prompt)  # reuse_cache=False: PSG Edit's memory is cleared too
    assert len(fresh.progress(edit_id)) == full
    assert torch.equal(fresh.output(edit_id, 0), scaled.output(edit_id, 0))
    assert not torch.equal(first.output(edit_id, 0), scaled.output(edit_id, 0)), "scale had no effect"


def test_host_edit_memory_is_bounded(inprocess):
    memory = inprocess.pack_module().nodes.inversion_cache.INVERSIONS
    memory.clear()
    for i in range(memory.max_entries + 2):
        prompt, edit_id = _prompt(source=f"a photo of cat number {i}")
        _run(inprocess, prompt, edit_id)
    assert len(memory) == memory.max_entries


def test_host_edit_has_no_seed_widget(inprocess):
    """The edit is deterministic: no widget that would do nothing."""
    info = inprocess.node_class("PSGEdit").INPUT_TYPES()
    names = {n for section in info.values() if isinstance(section, dict) for n in section}
    assert "steps" in names and "seed" not in names


def test_host_edit_memory_key_sees_every_value(comfy_host):
    """Equal inputs built separately match; one changed element, a dtype, a shape, a key or an
    extra conditioning option (e.g. Flux guidance) does not."""
    fingerprint = comfy_host.pack_module().nodes.inversion_cache.fingerprint
    torch.manual_seed(0)
    emb = torch.randn(1, 77, 64)
    cond = [[emb, {"pooled_output": torch.ones(1, 64)}]]
    same = [[emb.clone(), {"pooled_output": torch.ones(1, 64)}]]
    assert fingerprint(cond, 50, "simple") == fingerprint(same, 50, "simple")
    nudged = emb.clone()
    nudged[0, 3, 5] += 1e-6
    others = [
        [[[nudged, {"pooled_output": torch.ones(1, 64)}]], 50, "simple"],
        [[[emb, {"pooled_output": torch.ones(1, 64), "guidance": 3.5}]], 50, "simple"],
        [[[emb.double(), {"pooled_output": torch.ones(1, 64)}]], 50, "simple"],
        [[[emb.reshape(1, 64, 77), {"pooled_output": torch.ones(1, 64)}]], 50, "simple"],
        [cond, 49, "simple"],
        [cond, 50, "normal"],
    ]
    keys = {fingerprint(*parts) for parts in others} | {fingerprint(cond, 50, "simple")}
    assert len(keys) == len(others) + 1
    assert fingerprint(torch.ones(3, dtype=torch.bfloat16)) != fingerprint(torch.ones(3))
