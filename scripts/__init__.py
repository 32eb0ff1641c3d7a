"""Maintainer scripts. Run the Python ones from the repository root as modules, e.g.
``.venv/bin/python -m scripts.build_workflows --check``: the root is then on the import path, so
they import ``psg_core`` and ``psg_cli`` as they are; the tests' helper package
(``tests/psg_testing``) is loaded as for the benchmarks.
"""

from __future__ import annotations

from benchmarks import load_test_helpers

load_test_helpers()
