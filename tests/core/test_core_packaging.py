"""What users download: registry metadata as the ``[tool.comfy]`` specification defines it, and an
archive (git-tracked files minus ``.comfyignore``) that holds the pack and nothing of the
developer's, yet everything the pack, the client and the README's user commands need."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import tomllib
from PIL import Image

from psg_cli import workflow

REPO = Path(__file__).resolve().parents[2]
TOOL_COMFY_KEYS = {"PublisherId", "DisplayName", "Icon", "Banner", "requires-comfyui", "includes"}
"""The keys docs.comfy.org/registry/specifications documents for [tool.comfy]."""
RAW_PREFIX = "https://raw.githubusercontent.com/"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def shipped_files() -> set[str]:
    def git(*args: str) -> set[str]:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others",
                              "--exclude-standard",
                              *args], capture_output=True, text=True, check=True).stdout
        return set(out.split("\n")) - {""}

    tracked = git()
    ignored = git("--ignored", "--exclude-from", str(REPO / ".comfyignore"))
    return {f for f in tracked - ignored if (REPO / f).is_file()}


def test_core_packaging_tool_comfy_uses_only_specified_keys_and_a_real_icon():
    tool = pyproject()["tool"]["comfy"]
    assert set(tool) <= TOOL_COMFY_KEYS, f"unknown [tool.comfy] keys: {set(tool) - TOOL_COMFY_KEYS}"
    assert tool["PublisherId"] and tool["DisplayName"]
    icon = tool["Icon"]
    repo_url = pyproject()["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    assert icon.startswith(f"{RAW_PREFIX}{repo_url}/main/"), icon
    local = REPO / icon.removeprefix(f"{RAW_PREFIX}{repo_url}/main/")
    with Image.open(local) as img:  # the spec: SVG/PNG/JPG/GIF, at most 400x400, square
        assert img.format in {"PNG", "JPEG", "GIF"} and img.width == img.height <= 400


def test_core_packaging_classifiers_name_the_os_and_accelerator():
    classifiers = pyproject()["project"]["classifiers"]
    assert any(c.startswith("Operating System ::") for c in classifiers)
    assert any(c.startswith("Environment :: GPU ::") for c in classifiers)


def test_core_packaging_archive_is_the_pack_without_developer_files():
    files = shipped_files()
    for dev in ("tests/", "benchmarks/", ".ci/"):
        assert not [f for f in files if f.startswith(dev)], f"{dev} would ship to users"
    assert not [f for f in files if f.startswith("scripts/") and f != "scripts/edit.sh"]
    needed = {"__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "scripts/edit.sh",
              "psg_cli/__main__.py", "nodes/__init__.py", "psg_core/__init__.py", "examples/edits.json",
              "psg_eval/__init__.py", "psg_eval/core.py", "psg_eval/image_metrics.py"}
    assert needed <= files, needed - files
    templates = str(workflow.api_dir().parent.relative_to(REPO))
    for folder in (templates, "web", "examples/photos"):
        assert any(f.startswith(folder + "/") for f in files), f"{folder}/ would not ship"


def test_core_packaging_shipped_code_imports_nothing_left_out():
    """No shipped module imports from tests/, benchmarks/ or scripts/ (absent for users)."""
    files = shipped_files()
    left_out = {"tests", "benchmarks", "scripts", "psg_testing"}
    for name in sorted(f for f in files if f.endswith(".py")):
        tree = ast.parse((REPO / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not set(roots) & left_out, f"{name} imports {roots}"


def test_core_packaging_readme_and_defaults_stay_inside_the_repository():
    """The README, the docs and the client's defaults never point outside the repository."""
    outside = re.compile(r"\.\./(?!\.)|/work/")
    for name in ["README.md", *[str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")]]:
        text = (REPO / name).read_text(encoding="utf-8")
        assert not outside.search(text), f"{name}: {outside.search(text).group(0)!r}"
    for name in shipped_files():
        if name.endswith(".py"):
            assert "../shared" not in (REPO / name).read_text(encoding="utf-8"), name
