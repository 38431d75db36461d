"""bias_act: add a per-channel bias, then an optional LeakyReLU.

Used on its own after G's 4x4 dense layer, and as the epilogue of `equalized_linear` (and of `equalized_conv2d` on
the cuda backend). Backends: `progan_fast.kernels.bias_act` (triton), `progan_fast.csrc.bias_act` (cuda).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import accumulation_dtype, check_activation, check_floating, check_same_device, check_tensor


def channel_view(v: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-channel vector in x's dtype, shaped to broadcast along dim `dim` of x."""
    shape = [1] * x.dim()
    shape[dim] = -1
    return v.to(x.dtype).reshape(shape)


def channel_sums(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-channel sums (fp32 at least) over every dim but `dim`: the bias gradient (a new tensor, never t)."""
    others = [d for d in range(t.dim()) if d != dim]
    dtype = accumulation_dtype(t.dtype)
    return t.sum(others, dtype=dtype) if others else t.to(dtype, copy=True)


def bias_act_reference(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                       negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    if bias is not None:
        x = x + channel_view(bias, x, dim)
    if activation == "lrelu":
        x = F.leaky_relu(x, negative_slope)
    return x


bias_act_op = Op("bias_act", bias_act_reference)


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
             negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """``activation(x + bias)`` with the bias broadcast along ``dim``; activation None/'linear' or 'lrelu'."""
    activation = check_activation(activation)
    check_floating("bias_act", x)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"bias_act: dim {dim} is out of range for x of shape {tuple(x.shape)}; the bias runs "
                         f"along dim (1 for [N, C, ...], -1 for [..., features])")
    if bias is not None:
        check_tensor("bias_act bias", bias)
    check_same_device("bias_act", x, bias)
    if bias is not None and (bias.dim() != 1 or bias.numel() != x.shape[dim]):
        raise ValueError(f"bias_act: bias must have shape [{x.shape[dim]}] (size of dim {dim} of x), "
                         f"got {tuple(bias.shape)}")
    return bias_act_op(x, bias, activation, negative_slope, dim)
