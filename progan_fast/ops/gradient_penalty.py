"""gradient_penalty: the WGAN-GP term weight * mean_n((||g_n||_2 - target)^2) of an input gradient g.

g is grad_x D(x_hat) built with create_graph=True, so the penalty's backward reaches D's parameters
through a double backward. Norms are taken in fp32. Reference: `gradient_penalty_reference`.
"""
from __future__ import annotations

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating


def gradient_penalty_reference(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    norms = torch.linalg.vector_norm(grad.flatten(1).to(accumulation_dtype(grad.dtype)), dim=1)
    return weight * (norms - target).square().mean()


_op = Op("gradient_penalty", gradient_penalty_reference)


def gradient_penalty(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    """Scalar penalty from per-sample L2 norms of grad [N, ...] (official: weight 10, target 1)."""
    check_floating("gradient_penalty", grad)
    if grad.dim() < 2:
        raise ValueError(f"gradient_penalty expects a per-sample gradient [N, ...], got shape {tuple(grad.shape)}")
    return _op(grad, weight, target)
