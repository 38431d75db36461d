"""bias_act: add a per-channel bias, then an optional LeakyReLU.

Reference: `bias_act_reference`. Used on its own after the 4x4 dense layer of G, and inside the
equalized conv / linear ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import check_activation


def bias_act_reference(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                       negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    if bias is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + bias.to(x.dtype).reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, negative_slope)
    return x


_op = Op("bias_act", bias_act_reference)


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
             negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """``activation(x + bias)`` with the bias broadcast along ``dim``; activation None/'linear' or 'lrelu'."""
    activation = check_activation(activation)
    if bias is not None and (bias.dim() != 1 or bias.numel() != x.shape[dim]):
        raise ValueError(f"bias_act: bias must have shape [{x.shape[dim]}] (size of dim {dim} of x), "
                         f"got {tuple(bias.shape)}")
    return _op(x, bias, activation, negative_slope, dim)
