"""The list of node classes this pack exposes (one place to add a node)."""

from __future__ import annotations

from comfy_api.latest import io


def all_nodes() -> list[type[io.ComfyNode]]:
    from .clip_score_nodes import PSGCLIPScore
    from .edit_nodes import PSGEdit
    from .guider_nodes import PSGTriplePromptGuider
    from .image_metrics_nodes import PSGImageMetrics
    from .image_nodes import PSGFitImage
    from .inversion_nodes import PSGDDIMInversion
    from .lpips_nodes import PSGLPIPSLoader
    from .p2p_nodes import PSGP2PSampler
    from .p2p_settings_nodes import PSGPromptToPrompt
    from .plot_nodes import PSGCompareGrid, PSGLossPlot
    from .sampler_nodes import PSGPerceptualSampler
    from .storage_nodes import PSGLoadInversion, PSGSaveInversion
    from .text_guidance_nodes import PSGTextGuidanceOptimize
    from .text_nodes import PSGTextEncode

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
        PSGImageMetrics,
        PSGCLIPScore,
        PSGCompareGrid,
        PSGLossPlot,
        PSGTextEncode,
        PSGPromptToPrompt,
        PSGP2PSampler,
    ]
