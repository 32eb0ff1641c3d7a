"""NaN and infinite numbers in the pack's number widgets are refused before anything runs.

JSON (so ComfyUI's HTTP API) accepts ``NaN`` and ``Infinity`` and ComfyUI's own min/max test
lets NaN through; every pack node with a FLOAT input checks them in ``validate_inputs`` through
one helper (nodes/validation.py). Declaring an input there turns ComfyUI's own range test off
for it, so the declared range is checked by the same helper.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
from psg_testing import host
from psg_testing.cli_support import swap_checkpoint_loader

from psg_cli.workflow import load_workflow


def pack_nodes(comfy_host) -> dict[str, type]:
    return {name: cls for name, cls in comfy_host.node_class_mappings.items() if name.startswith("PSG")
            and not name.startswith("PSGTest")}


def float_inputs(cls) -> dict[str, object]:
    """The FLOAT widgets (a force_input FLOAT is a socket fed by another node, not typed in)."""
    return {spec.id: spec for spec in cls.define_schema().inputs
            if spec.get_io_type() == "FLOAT" and not getattr(spec, "force_input", False)}


def test_host_number_inputs_every_float_widget_of_the_pack_is_checked(comfy_host):
    nodes = pack_nodes(comfy_host)
    assert len(nodes) >= 12, sorted(nodes)
    checked = 0
    for name, cls in nodes.items():
        floats = float_inputs(cls)
        if not floats:
            continue
        args = inspect.getfullargspec(cls.validate_inputs).args
        assert set(floats) <= set(args), f"{name}: validate_inputs does not take {set(floats) - set(args)}"
        label = cls.define_schema().display_name
        for input_name, spec in floats.items():
            for bad in (math.nan, math.inf, -math.inf):
                message = cls.validate_inputs(**{input_name: bad})
                assert isinstance(message, str), f"{name}.{input_name}={bad} accepted"
                assert message.startswith(f"{label}: '{input_name}' is {bad}") and "finite number" in message
            assert cls.validate_inputs(**{input_name: spec.default}) is True
            if spec.max is not None:
                assert "set a number between" in cls.validate_inputs(**{input_name: spec.max + 1})
            checked += 1
    assert checked >= 12, checked


@pytest.mark.parametrize(("value", "shown"), [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")])
def test_host_number_inputs_nan_over_the_http_api_is_refused_before_anything_runs(value, shown,
                                                                                   comfy_server):
    """The CLI's client writes JSON as Python's json does, so NaN goes out as the bare ``NaN``
    any client may send."""
    prompt = swap_checkpoint_loader(load_workflow("psg_edit"))
    edit_id = next(k for k, n in prompt.items() if n["class_type"] == "PSGEdit")
    prompt[edit_id]["inputs"]["scale"] = float(value)
    assert f'"scale": {value}' in json.dumps(prompt)
    before = comfy_server.queue()
    with pytest.raises(host.PromptValidationError) as refused:
        comfy_server.post_prompt(prompt)
    errors = refused.value.node_errors[edit_id]["errors"]
    details = " ".join(e.get("details", "") for e in errors)
    assert f"PSG Edit: 'scale' is {shown}" in details and "between 0 and 100" in details, errors
    assert comfy_server.queue() == before  # nothing queued, nothing ran


def test_host_number_inputs_range_is_still_enforced(comfy_host):
    """The declared min / max keep working for the inputs validate_inputs now owns."""
    prompt = swap_checkpoint_loader(load_workflow("psg_edit"))
    edit_id = next(k for k, n in prompt.items() if n["class_type"] == "PSGEdit")
    prompt[edit_id]["inputs"]["start"] = 1.5
    with pytest.raises(host.PromptValidationError) as info:
        comfy_host.run(prompt)
    assert "PSG Edit: 'start' is 1.5; set a number between 0 and 1" in str(info.value)
