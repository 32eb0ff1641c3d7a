"""Run the CLI the way a user without the dev environment does: a Python that can import only
the standard library, Pillow and numpy (anything else raises ImportError, as on a bare machine).

``python light_client.py -c CODE`` or ``python light_client.py PATH_TO_psg_cli ARGS...``; with
``PSG_IMPORT_LOG=FILE`` the top-level modules imported are written there at exit.
"""

from __future__ import annotations

import atexit
import importlib.abc
import os
import runpy
import sys
from pathlib import Path

ALLOWED = frozenset(sys.stdlib_module_names) | {"PIL", "numpy", "psg_cli", "__main__"}
"""What the light client may import: standard library, Pillow, numpy and itself."""
LAUNCHER = Path(__file__).resolve()


class _OnlyAllowed(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname.partition(".")[0] not in ALLOWED:
            raise ModuleNotFoundError(
                f"No module named '{fullname}' (light client: stdlib + Pillow + numpy only)", name=fullname)
        return None


def _log_imports() -> None:
    log = os.environ.get("PSG_IMPORT_LOG")
    if log:
        names = sorted({m.partition(".")[0] for m in list(sys.modules)})
        Path(log).write_text("\n".join(names) + "\n", encoding="utf-8")


def main() -> None:
    sys.meta_path.insert(0, _OnlyAllowed())
    atexit.register(_log_imports)
    if len(sys.argv) >= 3 and sys.argv[1] == "-c":
        code = sys.argv[2]
        sys.argv = ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
        return
    target = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = target
    runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
