"""The frontend check of the workflow tests can fail: ComfyUI's web frontend, driven in headless
Chromium, shows the missing-node dialog for a workflow with a node type nobody registered."""

from __future__ import annotations

import json

from psg_testing import host

WORKFLOWS = host.REPO_ROOT / "workflows"


def test_harness_frontend_check_catches_a_missing_node(frontend):
    first = sorted(WORKFLOWS.glob("*.json"))[0]
    ui = json.loads(first.read_text(encoding="utf-8"))
    victim = next(n for n in ui["nodes"] if n["type"].startswith("PSG"))
    victim["type"] = "PSGNoSuchNode"
    report = frontend.drop_workflow("missing_node_control.json", json.dumps(ui))
    problems = "\n".join(report.problems())
    assert report.unregistered == ["PSGNoSuchNode"]
    assert "dialog:" in problems and "PSGNoSuchNode" in problems, problems
