"""Running core code inside ComfyUI's sampling machinery (a ``CFGGuider`` plus a ``Sampler``), so
model patches, hooks, cond preprocessing (SDXL pooled output, width/height, Flux guidance) and device
placement are exactly what a KSampler would use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import comfy.model_base
import comfy.samplers
import torch

from .autograd import frozen, grad_context, make_grad_safe, normal_tensor
from .conditioning import CondBank
from .family import ModelFamily


@dataclass
class HostModel:
    """The loaded model inside ComfyUI's sampling context, as the core wants it."""

    patcher: Any
    guider: comfy.samplers.CFGGuider
    model_options: dict
    bank: CondBank
    family: ModelFamily
    latent: torch.Tensor  # process_latent_in'd input latent (model space)

    @property
    def inner(self) -> comfy.model_base.BaseModel:
        return self.guider.inner_model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor,
                conds: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """psg_core denoiser: x0-hat per cond from ONE ``calc_cond_batch`` call."""
        cond_lists = [self.bank.conds_for(c) for c in conds]
        sigma = sigma.reshape(-1).to(x.device, x.dtype)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        return list(comfy.samplers.calc_cond_batch(self.inner, cond_lists, x, sigma, self.model_options))

    def enable_model_gradients(self) -> None:
        """Needed only when autograd goes through the UNet (null-text, DPS)."""
        make_grad_safe(self.inner.diffusion_model)

    def process_latent_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.process_latent_out(x)


class _HostGuider(comfy.samplers.CFGGuider):
    """A plain CFGGuider holding named conds; never used to predict, only to set up sampling."""

    def set_named_conds(self, conds: dict[str, Any]) -> None:
        self.inner_set_conds(conds)


class _BodySampler(comfy.samplers.Sampler):
    """A ComfyUI Sampler that hands the prepared model to a function instead of sampling."""

    def __init__(self, body: Callable[[HostModel], torch.Tensor],
                 make_host: Callable[..., HostModel]) -> None:
        self.body = body
        self.make_host = make_host

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        host = self.make_host(model_wrap, extra_args["model_options"], latent_image)
        return self.body(host)


def run_on_host(
    model: Any,
    conds: dict[str, Any],
    latent: torch.Tensor,
    body: Callable[[HostModel], torch.Tensor],
    *,
    family: ModelFamily,
    fallback: str,
    sigmas: torch.Tensor,
    node: str,
    seed: int = 0,
) -> torch.Tensor:
    """Load ``model`` the way a sampler would and call ``body(host)`` inside a gradient context.

    ``latent`` is an outer-space LATENT sample tensor; ``body`` sees it process_latent_in'd and
    returns a model-space latent, which comes back process_latent_out'd (like any ComfyUI sampler).
    """
    guider = _HostGuider(model)
    guider.set_named_conds(conds)

    def make_host(model_wrap, model_options, latent_image):
        bank = CondBank(model_wrap.conds, fallback, node)
        inner_latent = normal_tensor(latent_image)
        if torch.count_nonzero(inner_latent) == 0:  # CFGGuider skips process_latent_in for zeros
            inner_latent = model_wrap.inner_model.process_latent_in(inner_latent)
        return HostModel(model, model_wrap, model_options, bank, family, inner_latent)

    sampler = _BodySampler(body, make_host)
    with grad_context(), frozen(model.model):
        latent = normal_tensor(latent)
        noise = torch.zeros_like(latent)
        out = guider.sample(noise, latent, sampler, normal_tensor(sigmas), seed=seed, disable_pbar=True)
    return out.detach()
