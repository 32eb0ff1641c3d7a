"""What the nodes run, one idea per module: inversion and text optimization, the triple-prompt guider,
perceptual sampling, the one-node edit, prompt-to-prompt, LPIPS loading and inversion files. Node
modules (``nodes/*_nodes.py``) hold schemas and call these; the maths is in ``psg_core``."""
