"""gradient_penalty: the WGAN-GP term weight * mean_n((||g_n||_2 - target)^2) of an input gradient g.

g is grad_x D(x_hat) built with create_graph=True, so the penalty's backward reaches D's parameters
through a double backward. Norms are taken in fp32. Backend: `progan_fast.csrc.gradient_penalty` (cuda).
"""
from __future__ import annotations

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating


def per_sample_norms(grad: torch.Tensor) -> torch.Tensor:
    """||g_n||_2 of every sample of [N, ...], in fp32 at least."""
    return torch.linalg.vector_norm(grad.flatten(1).to(accumulation_dtype(grad.dtype)), dim=1)


def gradient_penalty_reference(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    return weight * (per_sample_norms(grad) - target).square().mean()


gradient_penalty_op = Op("gradient_penalty", gradient_penalty_reference)


def gradient_penalty(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    """Scalar penalty from per-sample L2 norms of grad [N, ...] (official: weight 10, target 1)."""
    check_floating("gradient_penalty", grad)
    if grad.dim() < 2:
        raise ValueError(f"gradient_penalty expects a per-sample gradient [N, ...], got shape {tuple(grad.shape)}")
    return gradient_penalty_op(grad, weight, target)
