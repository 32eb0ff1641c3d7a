"""The method package, ``psg_core``, under the name it has where ``psg_eval`` runs.

ComfyUI imports this pack as one package named after its folder and does not put the pack root on
``sys.path``: there the nodes import ``<pack>.psg_eval`` and its core is ``<pack>.psg_core``. The
CLI, the tests and the benchmarks import ``psg_eval`` and ``psg_core`` top-level. Every module of
``psg_eval`` takes the core's modules from here (``from .core import losses``), so that choice is
made in this one place.
"""

from __future__ import annotations

if __package__ == "psg_eval":  # imported top-level (CLI, tests, benchmarks)
    from psg_core import losses, lpips_weights
else:  # inside the pack, as ComfyUI loads it
    from ..psg_core import losses, lpips_weights

__all__ = ["losses", "lpips_weights"]
