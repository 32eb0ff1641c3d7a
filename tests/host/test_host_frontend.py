"""Every shipped UI workflow loads in ComfyUI's own web frontend, served by a real ``--cpu`` server
and driven in headless Chromium, exactly as a user dropping the file on the canvas: no missing-node
dialog, no error toast or console/page error, every node known to the frontend, the graph
(nodes, links, widget values) as in the file, and the frontend's own API conversion
(``app.graphToPrompt``) equal to the ``example_workflows/api/`` twin. A screenshot of each lands in
``tests/artifacts/frontend/``. Needs ``bash scripts/setup_browser.sh`` (skips with the reason otherwise;
fails under CI)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from psg_testing import browser, host

logger = logging.getLogger(__name__)

WORKFLOWS = host.REPO_ROOT / "example_workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
ARTIFACTS = host.REPO_ROOT / "tests" / "artifacts" / "frontend"
def _drop(frontend: browser.ComfyFrontend, name: str, text: str) -> browser.LoadReport:
    """Drop the file, then keep a screenshot of what the user sees (before any assertion)."""
    report = frontend.drop_workflow(f"{name}.json", text)
    frontend.fit_view()
    frontend.screenshot(ARTIFACTS / f"{name}.png")
    return report


def _by_id(nodes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(n["id"]): n for n in nodes}


def test_host_frontend_knows_every_node_of_this_pack(frontend, comfy_server):
    """The frontend registered every node the server offers from this pack; booting it showed no
    error coming from the pack's web directory."""
    pack_nodes = {name for name, info in comfy_server.object_info().items()
                  if info.get("python_module", "").endswith(host.PACK_LINK_NAME)}
    assert pack_nodes, "the server lists no node of this pack"
    assert not pack_nodes - set(frontend.registered_node_types())
    from_pack = [str(m) for m in frontend.boot_messages if host.PACK_LINK_NAME in f"{m.text} {m.where}"]
    assert not from_pack, from_pack


@pytest.mark.parametrize("name", NAMES)
def test_host_frontend_loads_dropped_workflow(frontend, name):
    text = (WORKFLOWS / f"{name}.json").read_text(encoding="utf-8")
    ui = json.loads(text)
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    report = _drop(frontend, name, text)

    assert not report.problems(), f"{name} in the frontend:\n" + "\n".join(report.problems())
    loaded, shipped = _by_id(report.graph["nodes"]), _by_id(ui["nodes"])
    assert len(report.nodes) == len(ui["nodes"]) and loaded.keys() == shipped.keys()
    for node_id, node in shipped.items():
        assert loaded[node_id]["type"] == node["type"]
        assert loaded[node_id].get("widgets_values", []) == node.get("widgets_values", []), \
            f"{name}: node {node_id} ({node['type']}) widget values changed on load"
    assert sorted(report.graph["links"]) == sorted(ui["links"]), f"{name}: links changed on load"
    assert report.prompt == api, (
        f"{name}: the frontend's graphToPrompt differs from example_workflows/api/{name}.json"
    )


def test_host_frontend_offers_missing_checkpoints(frontend):
    """With the missing-models warning on (a user's default), a template whose checkpoint is not
    installed opens the frontend's download dialog naming the file, from properties.models."""
    ui = json.loads((WORKFLOWS / "psg_edit_sdxl.json").read_text(encoding="utf-8"))
    (loader,) = [n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    wanted = loader["properties"]["models"][0]["name"]
    frontend.set_setting("Comfy.Workflow.ShowMissingModelsWarning", True)
    try:
        report = _drop(frontend, "missing_model_offer", json.dumps(ui))
    finally:
        frontend.set_setting("Comfy.Workflow.ShowMissingModelsWarning", False)
    assert any(wanted in text for text in report.dialogs), report.dialogs
