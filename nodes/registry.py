"""The list of node classes this pack exposes (one place to add a node)."""

from __future__ import annotations

from comfy_api.latest import io


def all_nodes() -> list[type[io.ComfyNode]]:
    from .edit_nodes import PSGEdit
    from .guider_nodes import PSGTriplePromptGuider
    from .image_nodes import PSGFitImage
    from .inversion_nodes import PSGDDIMInversion, PSGTextGuidanceOptimize
    from .lpips_nodes import PSGLPIPSLoader
    from .metrics import NODES as METRIC_NODES
    from .p2p_nodes import NODES as P2P_NODES
    from .sampler_nodes import PSGPerceptualSampler
    from .storage_nodes import PSGLoadInversion, PSGSaveInversion

    return [
        PSGLPIPSLoader,
        PSGFitImage,
        PSGDDIMInversion,
        PSGTextGuidanceOptimize,
        PSGTriplePromptGuider,
        PSGPerceptualSampler,
        PSGEdit,
        PSGSaveInversion,
        PSGLoadInversion,
        *METRIC_NODES,
        *P2P_NODES,
    ]
