"""What the nodes run, one idea per module: inversion and text optimization, the triple-prompt guider,
perceptual sampling, the one-node edit, prompt-to-prompt (with its attention patches), LPIPS loading,
inversion files and the evaluation nodes' metrics. Node modules (``nodes/*_nodes.py``) hold schemas
and call these; the maths is in ``psg_core`` (the method) and ``psg_eval`` (evaluation)."""
