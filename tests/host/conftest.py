"""Fixtures for tests against a real ComfyUI host (see tests/psg_testing/host*.py).

Session fixtures (one of each per test run):
  comfy_root    Path of the ComfyUI source tree in use.
  comfy_host    InProcessHost: ComfyUI booted as a library (CPU) with this pack and the
                test-only nodes; ``comfy_host.run(prompt) -> RunResult``.
  comfy_server  ComfyServer: a real ``main.py --cpu`` on 127.0.0.1 with this pack linked
                into its custom_nodes; ``post_prompt`` / ``wait`` / ``view`` / ...
  tiny_models   psg_testing.tiny_models.build_tiny(family, seed=0) -> TinyModels.

Without a host every test file here is reported skipped WITHOUT being imported (so test
modules may import comfy at top level), and the run ends with one loud line saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psg_testing import host

logger = logging.getLogger(__name__)

COMFY_ROOT = host.find_comfyui_root()
HOST_TESTS_DIR = Path(__file__).resolve().parent
SKIP_REASON = "no ComfyUI host ($COMFYUI_ROOT or ~/ComfyUI): see the NO COMFYUI HOST line"

if COMFY_ROOT is not None:
    # Before any test module is imported: CPU mode, host first on sys.path.
    host.prepare_comfy_import(COMFY_ROOT)


# --------------------------------------------------------------------------- no host


class _SkippedHostFile(pytest.File):
    """Stands in for a host test module when there is no host: one skipped item, no import."""

    def collect(self) -> Iterator[pytest.Item]:
        yield _SkippedHostItem.from_parent(self, name=self.path.stem)


class _SkippedHostItem(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(SKIP_REASON)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.name} (needs a ComfyUI host)"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if COMFY_ROOT is None and HOST_TESTS_DIR in module_path.resolve().parents:
        return _SkippedHostFile.from_parent(parent, path=module_path)
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COMFY_ROOT is None:
        terminalreporter.write_line(host.no_host_message(), yellow=True, bold=True)
    else:
        terminalreporter.write_line(f"host tests ran against the ComfyUI source tree at {COMFY_ROOT}")


# --------------------------------------------------------------------------- server log on failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    server = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and server is not None:
        report.sections.append(("ComfyUI server log (tail)", server.log_tail()))
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    if COMFY_ROOT is None:
        pytest.skip(SKIP_REASON)
    return COMFY_ROOT


@pytest.fixture(scope="session")
def comfy_host(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from psg_testing.host_inprocess import InProcessHost

    in_process = InProcessHost.boot(tmp_path_factory.mktemp("comfy_inprocess"), comfy_root)
    yield in_process
    in_process.close()


@pytest.fixture(scope="session")
def comfy_server(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from psg_testing.host_server import ComfyServer

    server = ComfyServer.start(tmp_path_factory.mktemp("comfy_server"), comfy_root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_models(comfy_root: Path) -> Callable:
    from psg_testing.tiny_models import build_tiny

    return build_tiny
