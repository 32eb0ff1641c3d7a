"""Fixtures for tests against a real ComfyUI host (see tests/psg_testing/host*.py), shared by the
pack's host tests (tests/host) and the tests of the harness itself (tests/harness).

Session fixtures (one of each per test run):
  comfy_root    Path of the ComfyUI source tree in use ($COMFYUI_ROOT, else ~/ComfyUI; the test
                command sets $COMFYUI_ROOT, extracting ComfyUI into .cache/ComfyUI if need be).
  comfy_host    psg_testing.host_inprocess.InProcessHost: ComfyUI booted as a library
                (CPU) with built-ins, comfy_extras, this pack and the test-only nodes, through
                the CLI's in-process backend (``.backend``: psg_cli's InProcessBackend).
                ``run(prompt, outputs=None, *, reuse_cache=False, on_progress=None)
                -> RunResult`` (``.output(node_id, slot=0)``, ``.ui``, ``.executed``,
                ``.cached``, ``.progress(node_id)``, ``.messages``, ``.events``);
                ``start(...) -> Future``; ``interrupt()``; ``node_class(name)``;
                ``node_class_mappings``; ``pack_module()``; ``base_dir`` (its
                input/, output/, temp/, user/).
  comfy_server  psg_testing.host_server.ComfyServer: a real ``main.py --cpu`` on
                127.0.0.1 with this pack linked into its custom_nodes as ComfyUI-PSG, driven
                through the CLI's client (``.client``: psg_cli's ServerBackend).
                ``url``, ``post_prompt(prompt, client_id=None) -> prompt_id``,
                ``wait(prompt_id, timeout_s=120, check=True) -> history entry``,
                ``run(prompt)``, ``object_info(cls=None)``, ``upload_image(path)``,
                ``view(filename, subfolder, type)``, ``interrupt()``, ``queue()``,
                ``events()`` (websocket, ``wait_for(type, where=...)``), ``log_tail()``.
                Another server for one test or module: ``with ComfyServer.running(dir) as s``.
  lpips_folder  (per module) a seeded random AlexNet in an extra 'lpips' model folder.
  tiny_models   psg_testing.tiny_models.build_tiny(family, seed=0, *, cached=True)
                -> TinyModels(model, clip, vae, family); families sd15, sd2v, sdxl, flow.
  frontend      psg_testing.browser.ComfyFrontend: ComfyUI's web frontend of ``comfy_server`` in
                headless Chromium (needs ``bash scripts/setup_browser.sh``).

Both runners raise psg_testing.host.PromptValidationError (``.error``, ``.node_errors``),
PromptExecutionError (``.node_id``, ``.node_type``, ``.exception_type``,
``.exception_message``) or PromptInterrupted (``.node_id``) with ComfyUI's own messages.

Writing a host test:
    from comfy_execution.graph_utils import GraphBuilder
    graph = GraphBuilder(prefix="")    # plain ids "1", "2"; the default prefix depends on history
    ckpt = graph.node("PSGTestTinyCheckpoint", family="sd15", seed=0)   # MODEL, CLIP, VAE
    ...
    result = comfy_host.run(graph.finalize())

Rules the harness relies on:
  * Never import this pack's ``nodes`` package as top-level ``nodes`` (ComfyUI's nodes.py
    owns that name); reach pack code through the host (``comfy_host.node_class(...)``,
    ``comfy_host.pack_module()``). Pack code must use relative imports: ComfyUI imports
    the pack by file path, so ``import psg_core`` works under pytest but not in a server.
  * ``psg_core`` imported by a test and the pack's own ``<pack>.psg_core`` are different
    module objects: compare values, not classes (no isinstance across them).
  * This conftest imports ``comfy.cli_args`` at collection time (CPU mode must be set
    before anything imports comfy.model_management): a core test asserting that
    psg_core never imports comfy must check in a subprocess.
  * ``comfy_host.run`` starts from an empty output cache unless ``reuse_cache=True``.

Without a host every test file under tests/host and tests/harness is reported skipped WITHOUT
being imported (so test modules may import comfy at top level), and the run ends with one loud line
saying so. Under CI (``CI=true``) every skip, here or anywhere, is a failure with its reason. If the pack
(or the test nodes) fails to import, the fixtures raise with the import error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psg_testing import browser, host
from psg_testing.cli_support import write_photo

logger = logging.getLogger(__name__)

COMFY_ROOT = host.find_comfyui_root()
TESTS_DIR = Path(__file__).resolve().parent
HOST_TEST_DIRS = (TESTS_DIR / "host", TESTS_DIR / "harness")
"""Tests that need a ComfyUI host: skipped without one (each file unimported)."""
SKIP_REASON = "no ComfyUI host ($COMFYUI_ROOT or ~/ComfyUI): see the NO COMFYUI HOST line"
UNDER_CI = os.environ.get("CI", "").lower() == "true"
EXAMPLE_PHOTO = "example.png"
"""The file name the shipped LoadImage nodes refer to (a user would have uploaded a photo)."""


def needs_host(path: Path) -> bool:
    path = path.resolve()
    return any(folder == path or folder in path.parents for folder in HOST_TEST_DIRS)

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
    if COMFY_ROOT is None and needs_host(module_path):
        return _SkippedHostFile.from_parent(parent, path=module_path)
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COMFY_ROOT is None:
        terminalreporter.write_line(host.no_host_message(), yellow=True, bold=True)
    else:
        terminalreporter.write_line(f"host tests ran against the ComfyUI source tree at {COMFY_ROOT}")


# --------------------------------------------------------------------------- reports


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI every skip is a failure (the host, the browser and every module are part of what
    CI proves); a failure next to a server carries the tail of its log."""
    report = yield
    if UNDER_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"CI=true: no test may skip, and this one did: {_skip_reason(report)}"
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

    with ComfyServer.running(tmp_path_factory.mktemp("comfy_server"), comfy_root) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_models(comfy_root: Path) -> Callable:
    from psg_testing.tiny_models import build_tiny

    return build_tiny


@pytest.fixture(scope="module")
def lpips_folder(comfy_host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A (random, seeded) AlexNet backbone saved under torchvision's file name in an extra 'lpips'
    model folder: the LPIPS loader's real offline path, as extra_model_paths.yaml would add."""
    from psg_testing.metric_models import save_random_alexnet
    from psg_testing.model_folders import extra_model_folder

    folder = tmp_path_factory.mktemp("models") / "lpips"
    save_random_alexnet(folder)
    with extra_model_folder("lpips", folder):
        yield str(folder)


@pytest.fixture(scope="module")
def frontend(comfy_server, tmp_path_factory: pytest.TempPathFactory):
    reason = browser.unavailable_reason()
    if reason:
        pytest.skip(reason)
    photo = write_photo(tmp_path_factory.mktemp("frontend") / EXAMPLE_PHOTO, size=512)
    browser.ensure_input_image(comfy_server.url, EXAMPLE_PHOTO, photo)
    with browser.ComfyFrontend.open(comfy_server.url) as page:
        yield page
    if page.external_requests:
        logger.info("requests the page tried outside 127.0.0.1 (aborted): %s", page.external_requests)
