"""Evaluation of edits, beside the method (``psg_core``): image metrics (MSE, PSNR, SSIM, LPIPS,
whole image and background only), CLIPScore, DINO structure distance, pictures (comparison grids,
loss plots), the batch report, and PIE-Bench scoring with PnPInversion's conventions
(``python -m psg_eval``, see ``evaluate.py``).

The evaluation nodes (``nodes/image_metrics_nodes.py``, ``clip_score_nodes.py``, ``plot_nodes.py``)
call it through ``nodes/pipelines/metrics.py``; it never imports ComfyUI, the nodes or the CLI, and takes
its few ``psg_core`` pieces (mask normalisation, offline LPIPS weights) through ``core.py``. Its
inputs are plain tensors, image files and :class:`psg_eval.report.ReportItem`, never a client's
file format. PIE-Bench's extra dependencies are the ``eval`` extra of ``pyproject.toml``.
"""
