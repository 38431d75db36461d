"""Triton backend of the fade blends (`progan_fast.ops.fade`), forward and backward, each in one pass over its
tensors.

- fade: out = old + (new - old) * alpha, elementwise over dense tensors of one layout. Its backward writes
  d_new = alpha * g and d_old = (1 - alpha) * g in one pass; the two kernels are each other's adjoints.
- fade_upsample: out = low_up + (high - low_up) * alpha with low_up = nearest 2x upsample of low. A program
  walks low pixels: it reads each low value once and its 2x2 quad of high. The backward writes
  d_high = alpha * g and d_low = (1 - alpha) * (sum of the quad of g); the two are adjoints.
- fade_downsample: out = m + (x - m) * alpha with m = mean of the 2x2 quad of x: one read of x. The map is
  self-adjoint, so its backward is the same kernel.
The quad kernels address tensors through strides and walk the pixels in the memory order of the output.
alpha is a float argument or is read on the device from a 0-dim tensor (ALPHA_FROM_PTR); it travels through
the custom ops as (alpha_tensor, alpha_value). No gradient with respect to alpha (a tensor alpha that requires
grad is refused).

Opaque custom ops, so torch.compile traces the models through their fake implementations. The blends are linear
in the feature maps, so each backward is a linear op whose own backward is the forward kernel (or, for the
self-adjoint fade_downsample, itself): D's gradient penalty takes a double backward through them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from progan_fast.kernels._common import (BLOCK, alpha_kwargs, block_of, check_kernel_dtypes, check_same_dtype, dense,
                                        elementwise_grid, elementwise_operands, load_alpha, nchw_index, split_alpha)
from progan_fast.layout import empty_4d, is_channels_last
from progan_fast.ops._checks import Alpha
from progan_fast.ops.fade import fade_downsample_op, fade_op, fade_upsample_op

Pair = Tuple[torch.Tensor, torch.Tensor]


@triton.jit
def _fade_kernel(new_ptr, old_ptr, out_ptr, numel, alpha_ptr, alpha_value,
                 ALPHA_FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    alpha = load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    new = tl.load(new_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (old + (new - old) * alpha).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fade_bwd_kernel(g_ptr, d_new_ptr, d_old_ptr, numel, alpha_ptr, alpha_value,
                     ALPHA_FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    alpha = load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(d_new_ptr + offs, (g * alpha).to(d_new_ptr.dtype.element_ty), mask=mask)
    tl.store(d_old_ptr + offs, (g * (1.0 - alpha)).to(d_old_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _low_pixels(num_low, C, H_low, W_low, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """(n, c, h, w) of this program's low-resolution pixels, walked in the output's memory order, and the mask."""
    offs, mask = block_of(num_low, BLOCK)
    n, c, h, w = nchw_index(offs, C, H_low, W_low, CHANNELS_LAST)
    return n, c, h, w, mask


@triton.jit
def _quad_offset(n, c, h_low, w_low, sn, sc, sh, sw):
    """Offset of the top-left element of the 2x2 quad over low pixel (h_low, w_low)."""
    return n.to(tl.int64) * sn + c * sc + (2 * h_low) * sh + (2 * w_low) * sw


@triton.jit
def _fade_upsample_kernel(high_ptr, low_ptr, out_ptr, num_low, C, H_low, W_low,
                          shn, shc, shh, shw, sln, slc, slh, slw, son, soc, soh, sow, alpha_ptr, alpha_value,
                          ALPHA_FROM_PTR: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    alpha = load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR)
    n, c, h, w, mask = _low_pixels(num_low, C, H_low, W_low, CHANNELS_LAST, BLOCK)
    low = tl.load(low_ptr + n.to(tl.int64) * sln + c * slc + h * slh + w * slw, mask=mask, other=0.0)
    low = low.to(tl.float32)
    high_quad = _quad_offset(n, c, h, w, shn, shc, shh, shw)
    out_quad = _quad_offset(n, c, h, w, son, soc, soh, sow)
    for dh in tl.static_range(2):
        for dw in tl.static_range(2):
            high = tl.load(high_ptr + high_quad + dh * shh + dw * shw, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + out_quad + dh * soh + dw * sow,
                     (low + (high - low) * alpha).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fade_upsample_bwd_kernel(g_ptr, d_high_ptr, d_low_ptr, num_low, C, H_low, W_low,
                              sgn, sgc, sgh, sgw, shn, shc, shh, shw, sln, slc, slh, slw, alpha_ptr, alpha_value,
                              ALPHA_FROM_PTR: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    alpha = load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR)
    n, c, h, w, mask = _low_pixels(num_low, C, H_low, W_low, CHANNELS_LAST, BLOCK)
    g_quad = _quad_offset(n, c, h, w, sgn, sgc, sgh, sgw)
    high_quad = _quad_offset(n, c, h, w, shn, shc, shh, shw)
    quad_sum = tl.zeros((BLOCK,), dtype=tl.float32)
    for dh in tl.static_range(2):
        for dw in tl.static_range(2):
            g = tl.load(g_ptr + g_quad + dh * sgh + dw * sgw, mask=mask, other=0.0).to(tl.float32)
            quad_sum += g
            tl.store(d_high_ptr + high_quad + dh * shh + dw * shw, (g * alpha).to(d_high_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(d_low_ptr + n.to(tl.int64) * sln + c * slc + h * slh + w * slw,
             (quad_sum * (1.0 - alpha)).to(d_low_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fade_downsample_kernel(x_ptr, out_ptr, num_low, C, H_low, W_low, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                            alpha_ptr, alpha_value,
                            ALPHA_FROM_PTR: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    alpha = load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR)
    n, c, h, w, mask = _low_pixels(num_low, C, H_low, W_low, CHANNELS_LAST, BLOCK)
    x_quad = _quad_offset(n, c, h, w, sxn, sxc, sxh, sxw)
    out_quad = _quad_offset(n, c, h, w, son, soc, soh, sow)
    x00 = tl.load(x_ptr + x_quad, mask=mask, other=0.0).to(tl.float32)
    x01 = tl.load(x_ptr + x_quad + sxw, mask=mask, other=0.0).to(tl.float32)
    x10 = tl.load(x_ptr + x_quad + sxh, mask=mask, other=0.0).to(tl.float32)
    x11 = tl.load(x_ptr + x_quad + sxh + sxw, mask=mask, other=0.0).to(tl.float32)
    mean = (x00 + x01 + x10 + x11) * 0.25
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_quad, (mean + (x00 - mean) * alpha).to(dtype), mask=mask)
    tl.store(out_ptr + out_quad + sow, (mean + (x01 - mean) * alpha).to(dtype), mask=mask)
    tl.store(out_ptr + out_quad + soh, (mean + (x10 - mean) * alpha).to(dtype), mask=mask)
    tl.store(out_ptr + out_quad + soh + sow, (mean + (x11 - mean) * alpha).to(dtype), mask=mask)


def _low_grid(low_shape) -> Tuple[int, Tuple[int]]:
    num_low = low_shape[0] * low_shape[1] * low_shape[2] * low_shape[3]
    return num_low, elementwise_grid(num_low)


@torch.library.custom_op("progan_fast::fade", mutates_args=())
def _fade_forward(new: torch.Tensor, old: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                  alpha_value: float) -> torch.Tensor:
    new, old, out = elementwise_operands(new, old)
    if new.numel():
        _fade_kernel[elementwise_grid(new.numel())](new, old, out, new.numel(),
                                                    **alpha_kwargs(alpha_tensor, alpha_value, out), BLOCK=BLOCK)
    return out


@_fade_forward.register_fake
def _(new, old, alpha_tensor, alpha_value):
    return torch.empty_like(dense(new))


@torch.library.custom_op("progan_fast::fade_backward", mutates_args=())
def _fade_backward(g: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> Pair:
    g = dense(g)
    d_new, d_old = torch.empty_like(g), torch.empty_like(g)
    if g.numel():
        _fade_bwd_kernel[elementwise_grid(g.numel())](g, d_new, d_old, g.numel(),
                                                      **alpha_kwargs(alpha_tensor, alpha_value, g), BLOCK=BLOCK)
    return d_new, d_old


@_fade_backward.register_fake
def _(g, alpha_tensor, alpha_value):
    return torch.empty_like(dense(g)), torch.empty_like(dense(g))


def _half_size(t: torch.Tensor) -> Tuple[int, int, int, int]:
    n, c, h, w = t.shape
    return n, c, h // 2, w // 2


@torch.library.custom_op("progan_fast::fade_upsample", mutates_args=())
def _fade_upsample_forward(high: torch.Tensor, low: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                           alpha_value: float) -> torch.Tensor:
    out = empty_4d(high.shape, high)
    num_low, grid = _low_grid(low.shape)
    if num_low:
        _fade_upsample_kernel[grid](high, low, out, num_low, *low.shape[1:], *high.stride(), *low.stride(),
                                    *out.stride(), **alpha_kwargs(alpha_tensor, alpha_value, out),
                                    CHANNELS_LAST=is_channels_last(out), BLOCK=BLOCK)
    return out


@_fade_upsample_forward.register_fake
def _(high, low, alpha_tensor, alpha_value):
    return empty_4d(high.shape, high)


@torch.library.custom_op("progan_fast::fade_upsample_backward", mutates_args=())
def _fade_upsample_backward(g: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> Pair:
    d_high, d_low = empty_4d(g.shape, g), empty_4d(_half_size(g), g)
    num_low, grid = _low_grid(d_low.shape)
    if num_low:
        _fade_upsample_bwd_kernel[grid](g, d_high, d_low, num_low, *d_low.shape[1:], *g.stride(), *d_high.stride(),
                                        *d_low.stride(), **alpha_kwargs(alpha_tensor, alpha_value, g),
                                        CHANNELS_LAST=is_channels_last(d_high), BLOCK=BLOCK)
    return d_high, d_low


@_fade_upsample_backward.register_fake
def _(g, alpha_tensor, alpha_value):
    return empty_4d(g.shape, g), empty_4d(_half_size(g), g)


@torch.library.custom_op("progan_fast::fade_downsample", mutates_args=())
def _fade_downsample_forward(x: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float
                             ) -> torch.Tensor:
    """Self-adjoint: also its own backward."""
    out = empty_4d(x.shape, x)
    num_low, grid = _low_grid(_half_size(x))
    if num_low:
        _fade_downsample_kernel[grid](x, out, num_low, *_half_size(x)[1:], *x.stride(), *out.stride(),
                                      **alpha_kwargs(alpha_tensor, alpha_value, out),
                                      CHANNELS_LAST=is_channels_last(out), BLOCK=BLOCK)
    return out


@_fade_downsample_forward.register_fake
def _(x, alpha_tensor, alpha_value):
    return empty_4d(x.shape, x)


def _save_alpha(ctx, inputs, output):
    """setup_context of every fade op: alpha is the last two inputs."""
    alpha_tensor, ctx.alpha_value = inputs[-2:]
    ctx.save_for_backward(alpha_tensor)


def _alpha(ctx) -> Tuple[Optional[torch.Tensor], float]:
    return ctx.saved_tensors[0], ctx.alpha_value


def _fade_forward_grad(ctx, grad):
    return (*_fade_backward(grad, *_alpha(ctx)), None, None)


def _fade_backward_grad(ctx, grad_new, grad_old):
    return _fade_forward(grad_new, grad_old, *_alpha(ctx)), None, None


def _fade_upsample_forward_grad(ctx, grad):
    return (*_fade_upsample_backward(grad, *_alpha(ctx)), None, None)


def _fade_upsample_backward_grad(ctx, grad_high, grad_low):
    return _fade_upsample_forward(grad_high, grad_low, *_alpha(ctx)), None, None


def _fade_downsample_forward_grad(ctx, grad):
    return _fade_downsample_forward(grad, *_alpha(ctx)), None, None


for _custom_op, _gradient in ((_fade_forward, _fade_forward_grad), (_fade_backward, _fade_backward_grad),
                              (_fade_upsample_forward, _fade_upsample_forward_grad),
                              (_fade_upsample_backward, _fade_upsample_backward_grad),
                              (_fade_downsample_forward, _fade_downsample_forward_grad)):
    _custom_op.register_autograd(_gradient, setup_context=_save_alpha)


def fade_triton(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    check_kernel_dtypes("fade", new, old)
    check_same_dtype("fade", new, old)
    return _fade_forward(new, old, *split_alpha("fade", alpha, new.device))


def fade_upsample_triton(high: torch.Tensor, low: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    check_kernel_dtypes("fade_upsample", high, low)
    check_same_dtype("fade_upsample", high, low)
    return _fade_upsample_forward(high, low, *split_alpha("fade_upsample", alpha, high.device))


def fade_downsample_triton(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    check_kernel_dtypes("fade_downsample", x)
    return _fade_downsample_forward(x, *split_alpha("fade_downsample", alpha, x.device))


fade_op.register("triton", fade_triton)
fade_upsample_op.register("triton", fade_upsample_triton)
fade_downsample_op.register("triton", fade_downsample_triton)
