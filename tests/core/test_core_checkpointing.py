"""psg_core.checkpointing: block-wise checkpointing keeps gradients exact and saves fewer activations."""

from __future__ import annotations

import torch

from psg_core.checkpointing import checkpoint_blocks


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.nn.functional.silu(self.a(x)))


def decoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    inner = torch.nn.Sequential(Block(), Block())
    return torch.nn.Sequential(Block(), inner, torch.nn.Conv2d(4, 3, 1)).requires_grad_(False)


def saved_bytes_and_grad(model: torch.nn.Module, z: torch.Tensor) -> tuple[int, torch.Tensor]:
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    v = z.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(v)
    saved_in_forward = saved
    (grad,) = torch.autograd.grad(out.square().sum(), v)
    return saved_in_forward, grad


def test_checkpoint_blocks_same_gradient_fewer_saved_activations() -> None:
    z = torch.randn(1, 4, 16, 16)
    plain, wrapped = decoder(), decoder()
    assert checkpoint_blocks(wrapped, (Block,)) == 3  # nested blocks found, outermost only
    assert checkpoint_blocks(wrapped, (Block,)) == 3  # idempotent
    saved_plain, grad_plain = saved_bytes_and_grad(plain, z)
    saved_ckpt, grad_ckpt = saved_bytes_and_grad(wrapped, z)
    torch.testing.assert_close(grad_ckpt, grad_plain)
    assert saved_ckpt < saved_plain / 2
    with torch.no_grad():
        torch.testing.assert_close(wrapped(z), plain(z))
