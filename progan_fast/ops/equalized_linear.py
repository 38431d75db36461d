"""equalized_linear: dense layer with weight * gain / sqrt(in_features), unscaled bias, optional LeakyReLU.

Acts on the last dimension, like nn.Linear. Layer: `progan_fast.EqualizedLinear`. Backends (cuBLAS matmul, then
the backend's bias_act): `progan_fast.kernels.equalized_linear`, `progan_fast.csrc.equalized_linear`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import KERNEL_DTYPES, Op
from ._checks import check_activation, check_fan_in, check_floating, check_same_device, check_tensor
from .bias_act import bias_act_reference
from .equalized_conv import equalized_scale


def equalized_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                               activation: Optional[str], negative_slope: float) -> torch.Tensor:
    y = F.linear(x, (weight * equalized_scale(weight, gain)).to(x.dtype))  # the weight in the input's dtype
    return bias_act_reference(y, bias, activation, negative_slope, dim=-1)


equalized_linear_op = Op("equalized_linear", equalized_linear_reference)


def equalized_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     gain: float = 2 ** 0.5, activation: Optional[str] = None,
                     negative_slope: float = 0.2) -> torch.Tensor:
    """x: [..., in_features]; weight: [out_features, in_features] stored as N(0, 1), used in x's dtype;
    bias: [out_features]."""
    check_floating("equalized_linear", x)
    check_floating("equalized_linear weight", weight)
    if bias is not None:
        check_tensor("equalized_linear bias", bias)
    check_same_device("equalized_linear", x, weight, bias)
    activation = check_activation(activation)
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"equalized_linear: input of shape {tuple(x.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)}; the last input dim must equal in_features")
    check_fan_in("equalized_linear", weight)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"equalized_linear: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    return equalized_linear_op(x, weight, bias, gain, activation, negative_slope)


def matmul_then_bias_act(bias_act_impl):
    """An accelerated equalized_linear: the matmul stays on cuBLAS (scaled weight), bias + activation run in
    bias_act_impl (the triton or the cuda bias_act); fp64 (gradient checks) runs the reference."""
    def equalized_linear_accelerated(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                     gain: float, activation: Optional[str], negative_slope: float) -> torch.Tensor:
        if x.dtype not in KERNEL_DTYPES:
            return equalized_linear_reference(x, weight, bias, gain, activation, negative_slope)
        y = F.linear(x, (weight * equalized_scale(weight, gain)).to(x.dtype))
        return bias_act_impl(y, bias, activation, negative_slope, dim=-1)
    return equalized_linear_accelerated
