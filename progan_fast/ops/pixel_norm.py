"""pixel_norm: x * rsqrt(mean(x^2 over channels) + eps), per pixel (docs/progan.md, Networks).

The statistic is computed in fp32. Layer: `progan_fast.PixelNorm`. Backend: `progan_fast.kernels.pixel_norm`.
"""
from __future__ import annotations

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating


def pixel_norm_reference(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean_square = x.to(accumulation_dtype(x.dtype)).square().mean(dim=1, keepdim=True)
    return x * torch.rsqrt(mean_square + eps).to(x.dtype)


pixel_norm_op = Op("pixel_norm", pixel_norm_reference)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the feature vector of every pixel (dim 1) to unit root-mean-square."""
    check_floating("pixel_norm", x)
    if x.dim() < 2:
        raise ValueError(f"pixel_norm expects [N, C, ...] (channels in dim 1), got shape {tuple(x.shape)}")
    return pixel_norm_op(x, eps)
