"""fade: the level-of-detail blends of progressive growing (docs/progan.md, "Fade-in").

- ``fade(new, old, alpha)``: the discriminator-side lerp of two feature maps, old + (new - old) * alpha.
- ``fade_upsample(high, low, alpha)``: alpha * high + (1 - alpha) * upsample2x_nearest(low): G's output,
  and reals given at both resolutions.
- ``fade_downsample(x, alpha)``: alpha * x + (1 - alpha) * upsample2x(avgpool2x2(x)): reals during a
  transition, from the full-resolution image alone.

alpha is a float in [0, 1] or a 0-dim tensor (kept on the device: no host synchronisation). The triton
backend does not differentiate with respect to alpha (it raises if a tensor alpha requires grad).
References: `*_reference`. `upsample2x` / `downsample2x` are the resampling steps of the models.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import Alpha, check_alpha, check_floating, check_rank, check_same_device


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling of [N, C, H, W]."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of [N, C, H, W]."""
    return F.avg_pool2d(x, kernel_size=2)


def fade_reference(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return old + (new - old) * alpha


def fade_upsample_reference(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return fade_reference(high, upsample2x(low), alpha)


def fade_downsample_reference(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return fade_reference(x, upsample2x(downsample2x(x)), alpha)


_fade = Op("fade", fade_reference)
_fade_upsample = Op("fade_upsample", fade_upsample_reference)
_fade_downsample = Op("fade_downsample", fade_downsample_reference)


def fade(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """old + (new - old) * alpha for two tensors of the same shape."""
    if new.shape != old.shape:
        raise ValueError(f"fade: new and old must have the same shape, got {tuple(new.shape)} and {tuple(old.shape)}")
    check_floating("fade", new)
    check_floating("fade", old)
    check_same_device("fade", new, old)
    return _fade(new, old, check_alpha(alpha))


def fade_upsample(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """alpha * high + (1 - alpha) * upsample2x_nearest(low); low is half the size of high."""
    check_rank("fade_upsample", high, 4, "[N, C, H, W]")
    check_rank("fade_upsample", low, 4, "[N, C, H/2, W/2]")
    check_floating("fade_upsample", high)
    check_floating("fade_upsample", low)
    check_same_device("fade_upsample", high, low)
    n, c, h, w = high.shape
    if tuple(low.shape) != (n, c, h // 2, w // 2) or h % 2 or w % 2:
        raise ValueError(f"fade_upsample: low must have shape {(n, c, h // 2, w // 2)} for high of shape "
                         f"{tuple(high.shape)} (even H and W), got {tuple(low.shape)}")
    return _fade_upsample(high, low, check_alpha(alpha))


def fade_downsample(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """alpha * x + (1 - alpha) * upsample2x(avgpool2x2(x)) for [N, C, H, W] with even H and W."""
    check_rank("fade_downsample", x, 4, "[N, C, H, W]")
    check_floating("fade_downsample", x)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"fade_downsample needs even H and W, got shape {tuple(x.shape)}")
    return _fade_downsample(x, check_alpha(alpha))


# --- triton backend --------------------------------------------------------------------------------------
# Opaque custom ops, so torch.compile traces the models through their fake implementations. The blends are
# linear in the feature maps, so each backward is a linear op whose own backward is the forward kernel (or,
# for the self-adjoint fade_downsample, itself): D's gradient penalty takes a double backward through them.
# alpha travels as (alpha_tensor, alpha_value): a 0-dim tensor read by the kernel on the device, or a float.

Pair = Tuple[torch.Tensor, torch.Tensor]


@torch.library.custom_op("progan_fast::fade", mutates_args=())
def _fade_op(new: torch.Tensor, old: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
             alpha_value: float) -> torch.Tensor:
    from ..kernels.fade import fade_forward
    return fade_forward(new, old, alpha_tensor, alpha_value)


@torch.library.custom_op("progan_fast::fade_grad", mutates_args=())
def _fade_grad_op(grad: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> Pair:
    from ..kernels.fade import fade_backward
    return fade_backward(grad, alpha_tensor, alpha_value)


@torch.library.custom_op("progan_fast::fade_upsample", mutates_args=())
def _fade_upsample_op(high: torch.Tensor, low: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                      alpha_value: float) -> torch.Tensor:
    from ..kernels.fade import fade_upsample_forward
    return fade_upsample_forward(high, low, alpha_tensor, alpha_value)


@torch.library.custom_op("progan_fast::fade_upsample_grad", mutates_args=())
def _fade_upsample_grad_op(grad: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> Pair:
    from ..kernels.fade import fade_upsample_backward
    return fade_upsample_backward(grad, alpha_tensor, alpha_value)


@torch.library.custom_op("progan_fast::fade_downsample", mutates_args=())
def _fade_downsample_op(x: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> torch.Tensor:
    from ..kernels.fade import fade_downsample_forward
    return fade_downsample_forward(x, alpha_tensor, alpha_value)


@_fade_op.register_fake
def _fade_fake(new, old, alpha_tensor, alpha_value):
    from ..kernels._common import dense
    return torch.empty_like(dense(new))


@_fade_grad_op.register_fake
def _fade_grad_fake(grad, alpha_tensor, alpha_value):
    from ..kernels._common import dense
    return torch.empty_like(dense(grad)), torch.empty_like(dense(grad))


@_fade_upsample_op.register_fake
def _fade_upsample_fake(high, low, alpha_tensor, alpha_value):
    from ..kernels._common import empty_4d
    return empty_4d(high.shape, high)


@_fade_upsample_grad_op.register_fake
def _fade_upsample_grad_fake(grad, alpha_tensor, alpha_value):
    from ..kernels._common import empty_4d
    n, c, h, w = grad.shape
    return empty_4d(grad.shape, grad), empty_4d((n, c, h // 2, w // 2), grad)


@_fade_downsample_op.register_fake
def _fade_downsample_fake(x, alpha_tensor, alpha_value):
    from ..kernels._common import empty_4d
    return empty_4d(x.shape, x)


def _save_alpha(ctx, inputs, output):
    """setup_context of every fade op: alpha is the last two inputs."""
    alpha_tensor, ctx.alpha_value = inputs[-2:]
    ctx.save_for_backward(alpha_tensor)


def _alpha(ctx) -> Tuple[Optional[torch.Tensor], float]:
    return ctx.saved_tensors[0], ctx.alpha_value


def _fade_backward(ctx, grad):
    return (*_fade_grad_op(grad, *_alpha(ctx)), None, None)


def _fade_grad_backward(ctx, grad_new, grad_old):
    return _fade_op(grad_new, grad_old, *_alpha(ctx)), None, None


def _fade_upsample_backward(ctx, grad):
    return (*_fade_upsample_grad_op(grad, *_alpha(ctx)), None, None)


def _fade_upsample_grad_backward(ctx, grad_high, grad_low):
    return _fade_upsample_op(grad_high, grad_low, *_alpha(ctx)), None, None


def _fade_downsample_backward(ctx, grad):
    return _fade_downsample_op(grad, *_alpha(ctx)), None, None


for _custom_op, _backward in ((_fade_op, _fade_backward), (_fade_grad_op, _fade_grad_backward),
                              (_fade_upsample_op, _fade_upsample_backward),
                              (_fade_upsample_grad_op, _fade_upsample_grad_backward),
                              (_fade_downsample_op, _fade_downsample_backward)):
    _custom_op.register_autograd(_backward, setup_context=_save_alpha)


def _split_alpha(op: str, alpha: Alpha, device: torch.device) -> Tuple[Optional[torch.Tensor], float]:
    from ..kernels._common import split_alpha
    return split_alpha(op, alpha, device)


def _fade_triton(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return _fade_op(new, old, *_split_alpha("fade", alpha, new.device))


def _fade_upsample_triton(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return _fade_upsample_op(high, low, *_split_alpha("fade_upsample", alpha, high.device))


def _fade_downsample_triton(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    return _fade_downsample_op(x, *_split_alpha("fade_downsample", alpha, x.device))


_fade.register("triton", _fade_triton)
_fade_upsample.register("triton", _fade_upsample_triton)
_fade_downsample.register("triton", _fade_downsample_triton)
