"""Finding the ComfyUI host and making it importable as a library (CPU mode).

The rest of the harness (in-process executor, server) lives in ``host_executor`` and
``host_server``; this module only answers "is there a host, where" and performs the
import-order-sensitive bootstrap that everything else relies on.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "COMFYUI_ROOT"
DEFAULT_ROOT = Path("~/ComfyUI")


def candidate_roots() -> list[Path]:
    """Where we look, in order: $COMFYUI_ROOT (when set), then ~/ComfyUI."""
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    candidates.append(DEFAULT_ROOT.expanduser())
    return candidates


def is_comfyui_root(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def find_comfyui_root() -> Path | None:
    """The first candidate that looks like a ComfyUI source tree, else None.

    When $COMFYUI_ROOT is set but wrong we do NOT fall back silently: a wrong setting
    should be loud, so the caller reports it instead.
    """
    env_value = os.environ.get(ENV_VAR)
    if env_value:
        path = Path(env_value).expanduser().resolve()
        return path if is_comfyui_root(path) else None
    path = DEFAULT_ROOT.expanduser().resolve()
    return path if is_comfyui_root(path) else None


def no_host_message() -> str:
    """One loud line: what was searched and how to enable the host tests."""
    looked = ", ".join(str(p) for p in candidate_roots())
    return (
        f"NO COMFYUI HOST FOUND (looked in: {looked}; need main.py, nodes.py and comfy/): "
        f"every test under tests/host is SKIPPED. To run them, get the ComfyUI source "
        f"(git clone https://github.com/Comfy-Org/ComfyUI) and set {ENV_VAR}=/path/to/ComfyUI "
        f"(or put it at ~/ComfyUI), then rerun scripts/test.sh."
    )


def prepare_comfy_import(root: Path | None = None) -> Path:
    """Make ``import comfy`` (and ComfyUI's top-level ``nodes``, ``execution``, ...)
    resolve to the host, in CPU mode. Idempotent; raises RuntimeError without a host.

    Must run before anything imports ``comfy.model_management`` (it reads the CLI args
    once at import time). The host root goes FIRST on sys.path because this repo also
    has a top-level ``nodes`` package that would otherwise shadow ComfyUI's nodes.py.
    """
    root = root or find_comfyui_root()
    if root is None:
        raise RuntimeError(no_host_message())
    root_str = str(root)
    if sys.path[:1] != [root_str]:
        if root_str in sys.path:
            sys.path.remove(root_str)
        sys.path.insert(0, root_str)

    loaded_nodes = sys.modules.get("nodes")
    if (
        loaded_nodes is not None
        and Path(getattr(loaded_nodes, "__file__", "") or "").resolve() != root / "nodes.py"
    ):
        raise RuntimeError(
            f"a module named 'nodes' was imported from {loaded_nodes.__file__!r} before the ComfyUI host: "
            "tests must not import this pack's nodes package as top-level 'nodes' "
            "(reach pack code through the host, see psg_testing.host_executor)"
        )

    import comfy.cli_args  # host-only import, after sys.path is set

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
    else:
        import comfy.model_management

        if comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
            raise RuntimeError("comfy.model_management was imported before CPU mode was set")
    return root
