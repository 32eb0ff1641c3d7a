"""PIE-Bench evaluation with PnPInversion's conventions, beside this pack's own metrics.

``python -m psg_eval`` reads a PIE-Bench folder (``mapping_file.json`` + ``annotation_images/``)
and edited images laid out as ``OUTPUT/<method>/annotation_images/<image_path>`` (what
``benchmarks/pie_bench.py`` writes, and what PnPInversion's ``evaluation/evaluate.py`` reads),
and prints the PnPInversion paper's table overall and per editing type.

Evaluation only: the nodes never import this package, and it never imports ComfyUI. Its
extra dependencies are the ``eval`` extra of ``pyproject.toml``.
"""
