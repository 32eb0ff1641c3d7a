"""Benchmarks and measurement tables. Run each from the repository root as a module, e.g.
``.venv/bin/python -m benchmarks.run --quick``: the root is then on the import path, so they
import ``psg_core``, ``psg_cli``, ``psg_eval`` and ``nodes`` as they are.

They share the test suite's helpers (``tests/psg_testing``: the exact Gaussian-mixture denoiser,
the tiny models, the ComfyUI harness). pytest finds that package through pyproject's
``pythonpath``; outside pytest it is loaded here from its folder, under the same name, so the
benchmarks and the tests import it alike.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TEST_HELPERS = Path(__file__).resolve().parents[1] / "tests" / "psg_testing"


def load_test_helpers() -> None:
    """Make ``import psg_testing`` work (a no-op under pytest, where it already does); the
    maintainer scripts (``scripts/``) call it too."""
    if "psg_testing" in sys.modules or importlib.util.find_spec("psg_testing") is not None:
        return
    spec = importlib.util.spec_from_file_location("psg_testing", TEST_HELPERS / "__init__.py",
                                                  submodule_search_locations=[str(TEST_HELPERS)])
    helpers = importlib.util.module_from_spec(spec)
    sys.modules["psg_testing"] = helpers
    spec.loader.exec_module(helpers)


load_test_helpers()
