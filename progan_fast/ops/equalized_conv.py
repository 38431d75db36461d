"""equalized_conv2d: the ProGAN conv block in one op (docs/progan.md, Networks).

[2x nearest upsample] -> conv2d with weight * gain / sqrt(in * k * k) (equalized learning rate) -> + bias
(unscaled) -> [LeakyReLU] -> [PixelNorm over channels]. One op, so that a kernel can do all of it in one pass.
Layer: `progan_fast.EqualizedConv2d`. Backends: `progan_fast.kernels.equalized_conv` (one fused Triton kernel),
`progan_fast.csrc.equalized_conv` (cuDNN conv, CUDA bias + LeakyReLU).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import check_activation, check_fan_in, check_floating, check_rank, check_same_device, check_tensor
from .bias_act import bias_act_reference
from .fade import upsample2x
from .pixel_norm import pixel_norm_reference


def equalized_scale(weight: torch.Tensor, gain: float) -> float:
    """gain / sqrt(fan_in) with fan_in = in_channels * kernel area (works for conv and dense weights)."""
    fan_in = weight[0].numel()
    return gain / math.sqrt(fan_in)


def same_padding(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(f"padding=None ('same') needs an odd kernel size, got {kernel_size}; pass padding explicitly")
    return kernel_size // 2


def output_size(x: torch.Tensor, weight: torch.Tensor, padding: int, upsample: bool) -> Tuple[int, int]:
    """(H_out, W_out) of the conv (stride 1) of x, upsampled 2x first when `upsample`."""
    height, width = (s * (2 if upsample else 1) + 2 * padding - weight.shape[2] + 1 for s in x.shape[2:])
    return height, width


def equalized_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                               padding: int, activation: Optional[str], negative_slope: float, pixel_norm: bool,
                               upsample: bool, eps: float) -> torch.Tensor:
    if upsample:
        x = upsample2x(x)
    # A weight of another dtype (fp32 master weights of fp16 activations) is cast to the input's, as the kernels do.
    y = F.conv2d(x, (weight * equalized_scale(weight, gain)).to(x.dtype), padding=padding)
    y = bias_act_reference(y, bias, activation, negative_slope)
    return pixel_norm_reference(y, eps) if pixel_norm else y


equalized_conv2d_op = Op("equalized_conv2d", equalized_conv2d_reference)


def equalized_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     gain: float = 2 ** 0.5, padding: Optional[int] = None, activation: Optional[str] = None,
                     negative_slope: float = 0.2, pixel_norm: bool = False, upsample: bool = False,
                     eps: float = 1e-8) -> torch.Tensor:
    """Equalized-LR conv2d (stride 1) with optional upsample, bias, LeakyReLU and PixelNorm.

    x: [N, in, H, W]; weight: [out, in, k, k] stored as N(0, 1), used in x's dtype; bias: [out] or None.
    padding None means "same" (odd k). Output: [N, out, H', W'] (H' = 2H with upsample).
    """
    check_rank("equalized_conv2d", x, 4, "[N, C, H, W]")
    check_rank("equalized_conv2d weight", weight, 4, "[out_channels, in_channels, k, k]")
    check_floating("equalized_conv2d", x)
    check_floating("equalized_conv2d weight", weight)
    if bias is not None:
        check_tensor("equalized_conv2d bias", bias)
    check_same_device("equalized_conv2d", x, weight, bias)
    activation = check_activation(activation)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"equalized_conv2d: input has {x.shape[1]} channels but the weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if weight.shape[2] != weight.shape[3]:
        raise ValueError(f"equalized_conv2d needs a square kernel, got weight shape {tuple(weight.shape)}")
    check_fan_in("equalized_conv2d", weight)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"equalized_conv2d: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    if padding is None:
        padding = same_padding(weight.shape[2])
    return equalized_conv2d_op(x, weight, bias, gain, padding, activation, negative_slope, pixel_norm, upsample, eps)
