"""pixel_norm: x * rsqrt(mean(x^2 over channels) + eps), per pixel (docs/progan.md, Networks).

Reference: `pixel_norm_reference`. Layer: `progan_fast.PixelNorm`. The statistic is computed in fp32.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating


def pixel_norm_reference(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean_square = x.to(accumulation_dtype(x.dtype)).square().mean(dim=1, keepdim=True)
    return x * torch.rsqrt(mean_square + eps).to(x.dtype)


_op = Op("pixel_norm", pixel_norm_reference)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the feature vector of every pixel (dim 1) to unit root-mean-square."""
    if x.dim() < 2:
        raise ValueError(f"pixel_norm expects [N, C, ...] (channels in dim 1), got shape {tuple(x.shape)}")
    check_floating("pixel_norm", x)
    return _op(x, eps)


# --- triton backend --------------------------------------------------------------------------------------
# Opaque custom ops, so torch.compile traces G through their fake implementations. The forward also returns
# the fp32 factors r = rsqrt(mean(x^2) + eps), which the backward uses with y (x is not kept). First order
# only: G needs no double backward.

@torch.library.custom_op("progan_fast::pixel_norm", mutates_args=())
def _pixel_norm_triton_op(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..kernels.pixel_norm import pixel_norm_forward
    return pixel_norm_forward(x, eps)


@_pixel_norm_triton_op.register_fake
def _pixel_norm_fake(x, eps):
    from ..kernels.pixel_norm import empty_outputs
    return empty_outputs(x)


@torch.library.custom_op("progan_fast::pixel_norm_grad", mutates_args=())
def _pixel_norm_grad_op(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    from ..kernels.pixel_norm import pixel_norm_backward
    return pixel_norm_backward(dy, y, r)


@_pixel_norm_grad_op.register_fake
def _pixel_norm_grad_fake(dy, y, r):
    return torch.empty_like(y)


def _pixel_norm_setup(ctx, inputs, output):
    y, r = output
    ctx.mark_non_differentiable(r)
    ctx.save_for_backward(y, r)


def _pixel_norm_backward(ctx, dy, _dr):
    y, r = ctx.saved_tensors
    return _pixel_norm_grad_op(dy, y, r), None


_pixel_norm_triton_op.register_autograd(_pixel_norm_backward, setup_context=_pixel_norm_setup)


def _pixel_norm_triton(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return _pixel_norm_triton_op(x, float(eps))[0]


_op.register("triton", _pixel_norm_triton)
