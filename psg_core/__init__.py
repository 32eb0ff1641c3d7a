"""PSG core: the method in pure torch (never imports ``comfy``).

Public API (see docs/method.md): NoiseSpace, ddim_invert, ddim_sample, TextGuidance,
optimize_null_text, PerceptualGuidance, load_lpips, metrics.
"""
