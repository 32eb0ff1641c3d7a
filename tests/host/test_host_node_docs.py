"""Every node this pack registers has a help page the frontend shows (web/docs/<node id>.md,
served from the pack's WEB_DIRECTORY) and a row in docs/nodes.md; every page belongs to a node."""

from __future__ import annotations

import re

from psg_testing import host

DOCS = host.REPO_ROOT / "web" / "docs"
REFERENCE = host.REPO_ROOT / "docs" / "nodes.md"


def _node_ids(comfy_host) -> dict[str, str]:
    """node id -> display name, from the pack's own registry as ComfyUI loaded it."""
    nodes = comfy_host.pack_module().nodes.registry.all_nodes()
    return {schema.node_id: schema.display_name for schema in (n.define_schema() for n in nodes)}


def test_host_every_node_has_a_help_page_and_a_reference_row(comfy_host):
    ids = _node_ids(comfy_host)
    assert len(ids) >= 13
    reference = REFERENCE.read_text(encoding="utf-8")
    for node_id, name in ids.items():
        page = DOCS / f"{node_id}.md"
        assert page.is_file(), f"{name}: no help page {page.relative_to(host.REPO_ROOT)}"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# {name}\n"), f"{page.name} must open with '# {name}'"
        assert len(text.split()) > 40, f"{page.name} is too short to help"
        assert f"| {name} (`{node_id}`) |" in reference, f"docs/nodes.md has no row for {name}"
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages <= set(ids), f"help pages for nodes that do not exist: {sorted(pages - set(ids))}"


def test_host_help_pages_name_only_real_inputs(comfy_host):
    """The inputs a page documents in bold under '## Inputs' exist on the node (no stale widget)."""
    for node in comfy_host.pack_module().nodes.registry.all_nodes():
        schema = node.define_schema()
        real = {i.id for i in schema.inputs}
        text = (DOCS / f"{schema.node_id}.md").read_text(encoding="utf-8")
        section = text.split("## Inputs", 1)[1].split("\n## ", 1)[0] if "## Inputs" in text else ""
        named = set(re.findall(r"^- \*\*([a-z_0-9]+)\*\*", section, flags=re.M))
        assert named or not section, f"{schema.node_id}.md lists no input under '## Inputs'"
        assert named <= real, f"{schema.node_id}.md documents inputs that do not exist: {named - real}"
