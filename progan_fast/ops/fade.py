"""fade: the level-of-detail blends of progressive growing (docs/progan.md, "Fade-in").

- ``fade(new, old, alpha)``: the discriminator-side lerp of two feature maps, old + (new - old) * alpha.
- ``fade_upsample(high, low, alpha)``: alpha * high + (1 - alpha) * upsample2x_nearest(low): G's output,
  and reals given at both resolutions.
- ``fade_downsample(x, alpha)``: alpha * x + (1 - alpha) * upsample2x(avgpool2x2(x)): reals during a
  transition, from the full-resolution image alone.

alpha is a float in [0, 1] or a 0-dim tensor (kept on the device: no host synchronisation).
`upsample2x` / `downsample2x` are the resampling steps of the models. Backend: `progan_fast.kernels.fade`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import Alpha, check_alpha, check_floating, check_rank, check_same_device, check_same_dtype


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling of [N, C, H, W]."""
    check_rank("upsample2x", x, 4, "[N, C, H, W]")
    check_floating("upsample2x", x)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of [N, C, H, W] with even H and W."""
    check_rank("downsample2x", x, 4, "[N, C, H, W]")
    check_floating("downsample2x", x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"downsample2x needs even H and W, got shape {tuple(x.shape)}")
    return F.avg_pool2d(x, kernel_size=2)


def fade_reference(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return old + (new - old) * alpha


def fade_upsample_reference(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return fade_reference(high, upsample2x(low), alpha)


def fade_downsample_reference(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return fade_reference(x, upsample2x(downsample2x(x)), alpha)


fade_op = Op("fade", fade_reference)
fade_upsample_op = Op("fade_upsample", fade_upsample_reference)
fade_downsample_op = Op("fade_downsample", fade_downsample_reference)


def fade(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """old + (new - old) * alpha for two tensors of the same shape."""
    check_floating("fade", new)
    check_floating("fade", old)
    if new.shape != old.shape:
        raise ValueError(f"fade: new and old must have the same shape, got {tuple(new.shape)} and {tuple(old.shape)}")
    check_same_device("fade", new, old)
    check_same_dtype("fade", new, old)
    return fade_op(new, old, check_alpha(alpha))


def fade_upsample(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """alpha * high + (1 - alpha) * upsample2x_nearest(low); low is half the size of high."""
    check_rank("fade_upsample", high, 4, "[N, C, H, W]")
    check_rank("fade_upsample", low, 4, "[N, C, H/2, W/2]")
    check_floating("fade_upsample", high)
    check_floating("fade_upsample", low)
    check_same_device("fade_upsample", high, low)
    check_same_dtype("fade_upsample", high, low)
    n, c, h, w = high.shape
    if tuple(low.shape) != (n, c, h // 2, w // 2) or h % 2 or w % 2:
        raise ValueError(f"fade_upsample: low must have shape {(n, c, h // 2, w // 2)} for high of shape "
                         f"{tuple(high.shape)} (even H and W), got {tuple(low.shape)}")
    return fade_upsample_op(high, low, check_alpha(alpha))


def fade_downsample(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """alpha * x + (1 - alpha) * upsample2x(avgpool2x2(x)) for [N, C, H, W] with even H and W."""
    check_rank("fade_downsample", x, 4, "[N, C, H, W]")
    check_floating("fade_downsample", x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"fade_downsample needs even H and W, got shape {tuple(x.shape)}")
    return fade_downsample_op(x, check_alpha(alpha))
