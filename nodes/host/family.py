"""Which model family a MODEL is: the core noise space it lives in, and an id saved inversions
are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import comfy.model_sampling

if TYPE_CHECKING:
    from ...psg_core.spaces import NoiseSpace


@dataclass(frozen=True)
class ModelFamily:
    """What the core needs to know about a model, plus an id that saved inversions are checked
    against (architecture / prediction type / latent format)."""

    space: NoiseSpace
    name: str


def detect_family(model: Any, node: str) -> ModelFamily:
    """Map the model's (possibly patched) ``model_sampling`` onto a core noise space.

    EPS and V_PREDICTION (SD1.x, SD2.x, SDXL) live in ComfyUI's VE space; CONST (SD3, Flux) is the
    flow space. Everything else is refused: inverting it with these formulas would be silently wrong.
    """
    from ...psg_core.spaces import NoiseSpace  # at use: the pack registers even without a full core
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(model, "get_model_object"):
        raise ValueError(f"{node}: the 'model' input is not a diffusion MODEL (got {type(model).__name__}).")
    model_type = getattr(inner, "model_type", None)
    type_name = getattr(model_type, "name", str(model_type))
    sampling = model.get_model_object("model_sampling")
    ms = comfy.model_sampling
    refused = tuple(
        getattr(ms, n)
        for n in ("X0", "EDM", "COSMOS_RFLOW", "StableCascadeSampling", "ModelSamplingContinuousEDM")
        if hasattr(ms, n)
    )
    if isinstance(sampling, ms.CONST):
        space = NoiseSpace.FLOW
    elif isinstance(sampling, (ms.EPS, ms.V_PREDICTION)) and not isinstance(sampling, refused):
        space = NoiseSpace.VE
    else:
        prediction = next((c.__name__ for c in type(sampling).__mro__
                           if c.__module__ == ms.__name__ and not c.__name__.startswith("ModelSampling")),
                          type(sampling).__name__)
        raise ValueError(
            f"{node}: model type {type_name} with {prediction} prediction "
            f"(sampling {type(sampling).__name__}) "
            "is not supported. "
            "PSG works with EPS and V_PREDICTION models (SD1.x, SD2.x, SDXL) and flow models (SD3, Flux); "
            "load one of those, or remove a ModelSampling patch that switched the prediction type."
        )
    pred = "CONST" if space is NoiseSpace.FLOW else ("V" if isinstance(sampling, ms.V_PREDICTION) else "EPS")
    name = f"{type(inner).__name__}/{pred}/{type(inner.latent_format).__name__}"
    return ModelFamily(space=space, name=name)
