"""``python -m psg_cli`` (from the pack folder) or ``python /path/to/pack/psg_cli`` (from anywhere).

Run as a folder, Python puts ``psg_cli/`` itself first on ``sys.path`` and gives no package:
the pack folder goes there instead, so the package imports the same way in both cases and the
user's working directory (their relative photo and output paths) is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))
    from psg_cli.main import main
else:
    from .main import main

sys.exit(main())
