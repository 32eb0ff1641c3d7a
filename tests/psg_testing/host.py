"""Finding the ComfyUI host and making it importable as a library (CPU mode).

The rest of the harness (in-process executor, server) lives in ``host_inprocess`` and
``host_server``; this module only answers "is there a host, where" and performs the
import-order-sensitive bootstrap that everything else relies on.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from psg_cli.inprocess_backend import put_first_on_sys_path

logger = logging.getLogger(__name__)

ENV_VAR = "COMFYUI_ROOT"
DEFAULT_ROOT = Path("~/ComfyUI")

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHED_ROOT = REPO_ROOT / ".cache" / "ComfyUI"
"""Where the test command extracts ComfyUI when no other host is found."""
TEST_NODES_DIR = Path(__file__).resolve().parent / "comfy_test_nodes"
PACK_LINK_NAME = "ComfyUI-PSG"
"""Name under custom_nodes/ that the pack gets, as a git clone or the registry would give it."""
TEST_NODES_LINK_NAME = "psg_test_nodes"
PYCACHE_PREFIX = str(REPO_ROOT / ".cache" / "pycache")


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
    for path in (DEFAULT_ROOT.expanduser().resolve(), CACHED_ROOT):
        if is_comfyui_root(path):
            return path
    return None


def no_host_message() -> str:
    """One loud line: what was searched and how to enable the host tests."""
    env_value = os.environ.get(ENV_VAR)
    if env_value:
        where = f"{ENV_VAR}={env_value} is not a ComfyUI source tree"
    else:
        where = (f"{ENV_VAR} is unset and neither {DEFAULT_ROOT.expanduser()} nor {CACHED_ROOT} "
                 f"is a ComfyUI source tree")
    return (
        f"NO COMFYUI HOST: {where} (need main.py, nodes.py and comfy/), so every test under "
        f"tests/host and tests/harness is SKIPPED. To run them, run the test command "
        f"(bash scripts/test.sh: it brings ComfyUI 0.3.64 into .cache/ComfyUI), or set "
        f"{ENV_VAR}=/path/to/ComfyUI (a checkout of https://github.com/Comfy-Org/ComfyUI)."
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
    put_first_on_sys_path(root)

    loaded_nodes = sys.modules.get("nodes")
    if (
        loaded_nodes is not None
        and Path(getattr(loaded_nodes, "__file__", "") or "").resolve() != (root / "nodes.py").resolve()
    ):
        raise RuntimeError(
            f"a module named 'nodes' was imported from {loaded_nodes.__file__!r} before the ComfyUI host: "
            "tests must not import this pack's nodes package as top-level 'nodes' "
            "(reach pack code through the host, see psg_testing.host_inprocess)"
        )

    if sys.pycache_prefix is None and not sys.dont_write_bytecode:
        # Keep the host tree untouched: bytecode of its modules goes under this repo.
        sys.pycache_prefix = PYCACHE_PREFIX
    import comfy.cli_args  # host-only import, after sys.path is set

    # ComfyUI's nodes.py puts comfy/ (which has a utils.py) first on sys.path; main.py has
    # imported the top-level ``utils`` package by then, and so must we.
    import utils  # noqa: F401

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
    else:
        import comfy.model_management

        if comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
            raise RuntimeError("comfy.model_management was imported before CPU mode was set")
    return root


def populate_custom_nodes(custom_nodes_dir: Path) -> Path:
    """Link this pack (as ComfyUI-PSG) and the test-only nodes into a custom_nodes dir."""
    custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    for link_name, target in ((PACK_LINK_NAME, REPO_ROOT), (TEST_NODES_LINK_NAME, TEST_NODES_DIR)):
        link = custom_nodes_dir / link_name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return custom_nodes_dir


# --------------------------------------------------------------------------- errors
# Raised by both the in-process executor and the server client, carrying ComfyUI's own
# error payloads so tests can assert on node id, class and message.


class PromptValidationError(Exception):
    """ComfyUI rejected the prompt (execution.validate_prompt / HTTP 400)."""

    def __init__(self, error: dict, node_errors: dict):
        self.error = error
        self.node_errors = node_errors
        lines = [f"{error.get('type')}: {error.get('message')} {error.get('details', '')}".rstrip()]
        for node_id, info in node_errors.items():
            for reason in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type')}): "
                             f"{reason.get('message')}: {reason.get('details')}")
        super().__init__("\n".join(lines))


class PromptExecutionError(Exception):
    """A node raised while the prompt ran (ComfyUI's ``execution_error`` message)."""

    def __init__(self, data: dict):
        self.data = data
        self.node_id: str = str(data.get("node_id"))
        self.node_type: str = str(data.get("node_type"))
        self.exception_type: str = str(data.get("exception_type"))
        self.exception_message: str = str(data.get("exception_message"))
        self.traceback: list[str] = list(data.get("traceback") or [])
        super().__init__(
            f"node {self.node_id} ({self.node_type}) raised {self.exception_type}: {self.exception_message}"
            + ("\n" + "".join(self.traceback) if self.traceback else "")
        )


class PromptInterrupted(Exception):
    """The prompt was interrupted (ComfyUI's ``execution_interrupted`` message)."""

    def __init__(self, data: dict):
        self.data = data
        self.node_id: str = str(data.get("node_id"))
        self.node_type: str = str(data.get("node_type"))
        self.executed: list[str] = list(data.get("executed") or [])
        super().__init__(f"interrupted in node {self.node_id} ({self.node_type})")


def raise_for_status_messages(messages: list) -> None:
    """Turn ComfyUI's status messages [(event, data), ...] into our exceptions."""
    for event, data in messages:
        if event == "execution_error":
            raise PromptExecutionError(data)
        if event == "execution_interrupted":
            raise PromptInterrupted(data)
