"""Drop-in nn.Module layers. Each is a thin holder of parameters around one op of `progan_fast.functional`."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import functional as F
from .ops._checks import check_activation, check_layer_size
from .ops.equalized_conv import same_padding


class EqualizedConv2d(nn.Module):
    """Conv2d with equalized learning rate, optionally fused with 2x upsample, bias, LeakyReLU and PixelNorm.

    ``weight`` [out, in, k, k] is stored as N(0, 1) and scaled by gain / sqrt(in * k * k) at run time;
    ``bias`` starts at zero and is not scaled. ``padding=None`` means "same" (odd k).
    Order: upsample -> conv -> bias -> activation -> pixel_norm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: Optional[int] = None,
                 bias: bool = True, gain: float = 2 ** 0.5, activation: Optional[str] = None,
                 negative_slope: float = 0.2, pixel_norm: bool = False, upsample: bool = False,
                 pixel_norm_eps: float = 1e-8):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            check_layer_size("EqualizedConv2d", name, value, 1)
        if padding is None:
            padding = same_padding(kernel_size)
        check_layer_size("EqualizedConv2d", "padding", padding, 0)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.padding, self.gain, self.negative_slope = padding, gain, negative_slope
        self.activation = check_activation(activation)
        self.pixel_norm, self.upsample, self.pixel_norm_eps = pixel_norm, upsample, pixel_norm_eps
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.equalized_conv2d(x, self.weight, self.bias, self.gain, self.padding, self.activation,
                                  self.negative_slope, self.pixel_norm, self.upsample, self.pixel_norm_eps)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"bias={self.bias is not None}, gain={self.gain:.4g}, activation={self.activation}, "
                f"pixel_norm={self.pixel_norm}, upsample={self.upsample}")


class EqualizedLinear(nn.Module):
    """Linear layer with equalized learning rate: weight [out, in] ~ N(0, 1) scaled by gain / sqrt(in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = 2 ** 0.5,
                 activation: Optional[str] = None, negative_slope: float = 0.2):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            check_layer_size("EqualizedLinear", name, value, 1)
        self.in_features, self.out_features = in_features, out_features
        self.gain, self.negative_slope = gain, negative_slope
        self.activation = check_activation(activation)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.equalized_linear(x, self.weight, self.bias, self.gain, self.activation, self.negative_slope)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, gain={self.gain:.4g}, "
                f"activation={self.activation}")


class PixelNorm(nn.Module):
    """x * rsqrt(mean(x^2 over channels) + eps) at every pixel."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_norm(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class MinibatchStdDev(nn.Module):
    """Appends the minibatch standard deviation as one extra channel.

    ``group_size`` G uses the official grouping (min(G, N) samples per group, N divisible by it);
    ``group_size=None`` uses the whole batch with the unbiased estimate.
    """

    def __init__(self, group_size: Optional[int] = 4, eps: float = 1e-8):
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"MinibatchStdDev: group_size must be >= 1 or None (whole batch), got {group_size}")
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.minibatch_stddev(x, self.group_size, self.eps)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, eps={self.eps}"
