"""The layering docs/architecture.md describes, read from the source (no imports, no host): the core
imports no host code, node modules import no other node module and stay short, and every function the
architecture page names exists where it says."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "node_helpers",
                "server")
MAX_NODE_MODULE_LINES = 150
LONGER_NODE_MODULES = {"metrics.py": "four evaluation nodes with their model-folder pickers"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(relative level, dotted module) of every import in ``path``; ``from . import a`` gives (1, 'a')."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module:
                found.append((node.level, node.module))
            else:
                found += [(node.level, alias.name) for alias in node.names]
    return found


def defines_nodes(path: Path) -> bool:
    """Whether ``path`` declares a node class (a subclass of ``io.ComfyNode``)."""
    classes = [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.ClassDef)]
    return any(ast.unparse(base).endswith("ComfyNode") for c in classes for base in c.bases)


def node_modules() -> list[Path]:
    """The modules of nodes/ that declare node classes, by their content (not only ``*_nodes.py``)."""
    return sorted(p for p in ROOT.glob("nodes/*.py") if defines_nodes(p))


def test_core_layout_node_classes_only_in_node_modules():
    """Every ``*_nodes.py`` declares nodes, and the host adapter and the pipelines declare none."""
    found = node_modules()
    assert set(ROOT.glob("nodes/*_nodes.py")) <= set(found) and len(found) >= 10, found
    for folder in ("host", "pipelines"):
        declaring = [p.name for p in (ROOT / "nodes" / folder).glob("*.py") if defines_nodes(p)]
        assert not declaring, f"nodes/{folder}/ declares node classes in {declaring}"


def test_core_layout_core_imports_no_host_or_pack_code():
    for path in sorted((ROOT / "psg_core").glob("*.py")):
        for level, module in imports_of(path):
            top = module.split(".")[0]
            assert not (level == 0 and top in HOST_MODULES), f"{path.name} imports {module}"
            assert level <= 1, f"{path.name} imports outside psg_core ({'.' * level}{module})"
            assert top not in ("nodes", "psg_cli"), f"{path.name} imports {module}"


OUTSIDE_CORE = ("comfy", "folder_paths", "nodes", "psg_cli", "psg_eval", "psg_testing", "server",
                "latent_preview", "node_helpers")
"""Top-level modules the core must never bring in: the host, the node layer, the client, evaluation."""
IMPORT_ALL_CORE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_core_layout_core_imports_nothing_outside_the_core_in_a_clean_interpreter():
    """Every psg_core module imported in a fresh isolated interpreter (-I: no PYTHONPATH, so no
    ComfyUI; only the repository root added): no host, node, client or evaluation module loads,
    whatever a module imports lazily at import time or through psg_core/__init__."""
    core = sorted(f"psg_core.{p.stem}" for p in (ROOT / "psg_core").glob("*.py") if p.stem != "__init__")
    proc = subprocess.run([sys.executable, "-I", "-c", IMPORT_ALL_CORE, str(ROOT), *core],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert set(core) <= set(loaded), set(core) - set(loaded)
    leaked = [m for m in loaded if m.split(".")[0].startswith(OUTSIDE_CORE)]
    assert not leaked, f"importing psg_core loads {leaked}"


def test_core_layout_node_modules_import_no_other_node_module():
    names = {p.stem for p in node_modules()}
    for path in node_modules():
        for level, module in imports_of(path):
            assert not (level == 1 and module.split(".")[0] in names), f"{path.name} imports .{module}"


@pytest.mark.parametrize("folder", ["host", "pipelines"])
def test_core_layout_adapter_and_pipelines_import_no_node_module(folder):
    names = {p.stem for p in node_modules()}
    for path in sorted((ROOT / "nodes" / folder).glob("*.py")):
        for level, module in imports_of(path):
            imported = module.split(".")[0]
            assert not (level == 2 and imported in names), f"{folder}/{path.name} imports ..{module}"


def test_core_layout_node_modules_are_short():
    for path in node_modules():
        lines = len(path.read_text().splitlines())
        if path.name in LONGER_NODE_MODULES:
            continue
        assert lines <= MAX_NODE_MODULE_LINES, (
            f"{path.name}: {lines} lines; move the mechanism to nodes/pipelines")


def test_core_layout_architecture_names_exist():
    """Each name in the formula table is defined in the file named before it (methods as Class.method)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and ".py`: `" in line]
    assert len(rows) >= 8, "the formula table is missing"
    checked = 0
    for row in rows:
        defined: set[str] = set()
        file = None
        for item in re.findall(r"`([^`]+)`", row.split("|")[2]):
            if item.endswith(".py"):
                file = item
                tree = ast.parse((ROOT / file).read_text())
                defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                continue
            assert file is not None, f"{item!r} named before its file: {row}"
            assert item.split(".")[-1] in defined, (
                f"docs/architecture.md names {file}: {item}, not defined there")
            checked += 1
    assert checked >= 15
