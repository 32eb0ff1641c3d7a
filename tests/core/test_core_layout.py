"""The layering docs/architecture.md describes, read from the source (no host): the core imports no
host, evaluation, client or node code; evaluation imports no host, client or node code and reaches the
core through one module; node modules import no other node module and stay short; every function the
architecture page names exists where it says. Two checks import in a clean subprocess: the core and
evaluation load no ComfyUI, and evaluation works inside the pack the way ComfyUI imports it."""

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
EVAL_CORE_LINK = "core.py"
"""The one psg_eval module that imports psg_core (under the name it has where psg_eval runs)."""


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
            assert top not in ("nodes", "psg_cli", "psg_eval"), f"{path.name} imports {module}"


def test_core_layout_evaluation_imports_no_host_client_or_node_code():
    for path in sorted((ROOT / "psg_eval").glob("*.py")):
        for level, module in imports_of(path):
            top = module.split(".")[0]
            assert not (level == 0 and top in HOST_MODULES), f"psg_eval/{path.name} imports {module}"
            assert top not in ("nodes", "psg_cli"), f"psg_eval/{path.name} imports {module}"
            if path.name != EVAL_CORE_LINK:  # the core only through core.py
                assert level <= 1 and top != "psg_core", f"psg_eval/{path.name} imports {module}"
            else:
                assert level <= 1 or module == "psg_core", f"psg_eval/{path.name} imports {module}"


OUTSIDE_CORE = ("comfy", "folder_paths", "nodes", "psg_cli", "psg_eval", "psg_testing", "server",
                "latent_preview", "node_helpers")
"""Top-level modules the core must never bring in: the host, the node layer, the client, evaluation."""
OUTSIDE_EVALUATION = tuple(m for m in OUTSIDE_CORE if m != "psg_eval")
"""Evaluation may use the core, nothing else of the pack and no host."""
IMPORT_ALL = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize(("package", "outside"),
                         [("psg_core", OUTSIDE_CORE), ("psg_eval", OUTSIDE_EVALUATION)])
def test_core_layout_package_loads_nothing_outside_its_layer_in_a_clean_interpreter(package, outside):
    """Every module of ``package`` imported in a fresh isolated interpreter (-I: no PYTHONPATH, so no
    ComfyUI; only the repository root added; this conftest imports comfy, hence the subprocess): no
    module of a layer above it or of the host loads, whatever it imports at import time."""
    names = sorted(f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py")
                   if p.stem not in ("__init__", "__main__"))
    proc = subprocess.run([sys.executable, "-I", "-c", IMPORT_ALL, str(ROOT), *names],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert len(names) >= 8 and set(names) <= set(loaded), set(names) - set(loaded)
    leaked = [m for m in loaded if m.split(".")[0].startswith(outside)]
    assert not leaked, f"importing {package} loads {leaked}"


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


def test_core_layout_evaluation_works_inside_the_pack_as_comfyui_imports_it(tmp_path):
    """ComfyUI imports the pack as one package named after its folder, the pack root not on sys.path:
    psg_eval then takes ``<pack>.psg_core``, and no top-level psg_core is loaded."""
    code = f"""
import importlib, sys, types
sys.path = [p for p in sys.path if p not in ('', {str(ROOT)!r})]
pack = types.ModuleType('ComfyUI-PSG')  # the pack's folder name, its __init__ (nodes) not run
pack.__path__ = [{str(ROOT)!r}]
sys.modules['ComfyUI-PSG'] = pack
metrics = importlib.import_module('ComfyUI-PSG.psg_eval.image_metrics')
core = importlib.import_module('ComfyUI-PSG.psg_eval.core')
assert core.losses.__name__ == 'ComfyUI-PSG.psg_core.losses', core.losses.__name__
assert core.lpips_weights.__name__ == 'ComfyUI-PSG.psg_core.lpips_weights'
assert 'psg_core' not in sys.modules and 'psg_eval' not in sys.modules
import torch
a = torch.rand(1, 3, 16, 16)
mask = torch.zeros(16, 16)
mask[4:12, 4:12] = 1
b = a.clone()
b[..., 4:12, 4:12] = 0
print(float(metrics.mse(a, b, mask)[0]), float(metrics.mse(a, b)[0]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    masked, whole = (float(v) for v in proc.stdout.split())
    assert masked == 0.0 and whole > 0.0
