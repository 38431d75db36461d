"""Triton kernels of the fade blends, forward and backward, each in one pass over its tensors.

- fade: out = old + (new - old) * alpha, elementwise over dense tensors of one layout. Its backward writes
  d_new = alpha * g and d_old = (1 - alpha) * g in one pass; the two kernels are each other's adjoints.
- fade_upsample: out = low_up + (high - low_up) * alpha with low_up = nearest 2x upsample of low. A program
  walks low pixels: it reads each low value once and its 2x2 quad of high. The backward writes
  d_high = alpha * g and d_low = (1 - alpha) * (sum of the quad of g); the two are adjoints.
- fade_downsample: out = m + (x - m) * alpha with m = mean of the 2x2 quad of x: one read of x. The map is
  self-adjoint, so its backward is the same kernel.
The quad kernels address tensors through strides and walk the pixels in the memory order of the output.
alpha is a float argument or is read on the device from a 0-dim tensor (ALPHA_FROM_PTR).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import (BLOCK, alpha_kwargs, block_of, check_inputs, check_same_dtype, dense, elementwise_grid,
                      elementwise_operands, empty_4d, is_channels_last, load_alpha, nchw_index)


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


def fade_forward(new: torch.Tensor, old: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                 alpha_value: float) -> torch.Tensor:
    new, old, out = elementwise_operands("fade", new, old)
    if new.numel():
        _fade_kernel[elementwise_grid(new.numel())](new, old, out, new.numel(),
                                                    **alpha_kwargs(alpha_tensor, alpha_value, out), BLOCK=BLOCK)
    return out


def fade_backward(g: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                  alpha_value: float) -> Tuple[torch.Tensor, torch.Tensor]:
    check_inputs("fade backward", g)
    g = dense(g)
    d_new, d_old = torch.empty_like(g), torch.empty_like(g)
    if g.numel():
        _fade_bwd_kernel[elementwise_grid(g.numel())](g, d_new, d_old, g.numel(),
                                                      **alpha_kwargs(alpha_tensor, alpha_value, g), BLOCK=BLOCK)
    return d_new, d_old


def fade_upsample_forward(high: torch.Tensor, low: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                          alpha_value: float) -> torch.Tensor:
    check_inputs("fade_upsample", high, low)
    check_same_dtype("fade_upsample", high, low)
    out = empty_4d(high.shape, high)
    num_low, grid = _low_grid(low.shape)
    if num_low:
        _fade_upsample_kernel[grid](high, low, out, num_low, *low.shape[1:], *high.stride(), *low.stride(),
                                    *out.stride(), **alpha_kwargs(alpha_tensor, alpha_value, out),
                                    CHANNELS_LAST=is_channels_last(out), BLOCK=BLOCK)
    return out


def fade_upsample_backward(g: torch.Tensor, alpha_tensor: Optional[torch.Tensor],
                           alpha_value: float) -> Tuple[torch.Tensor, torch.Tensor]:
    check_inputs("fade_upsample backward", g)
    n, c, h, w = g.shape
    d_high = empty_4d(g.shape, g)
    d_low = empty_4d((n, c, h // 2, w // 2), g)
    num_low, grid = _low_grid(d_low.shape)
    if num_low:
        _fade_upsample_bwd_kernel[grid](g, d_high, d_low, num_low, c, h // 2, w // 2, *g.stride(), *d_high.stride(),
                                        *d_low.stride(), **alpha_kwargs(alpha_tensor, alpha_value, g),
                                        CHANNELS_LAST=is_channels_last(d_high), BLOCK=BLOCK)
    return d_high, d_low


def fade_downsample_forward(x: torch.Tensor, alpha_tensor: Optional[torch.Tensor], alpha_value: float) -> torch.Tensor:
    check_inputs("fade_downsample", x)
    n, c, h, w = x.shape
    out = empty_4d(x.shape, x)
    num_low, grid = _low_grid((n, c, h // 2, w // 2))
    if num_low:
        _fade_downsample_kernel[grid](x, out, num_low, c, h // 2, w // 2, *x.stride(), *out.stride(),
                                      **alpha_kwargs(alpha_tensor, alpha_value, out),
                                      CHANNELS_LAST=is_channels_last(out), BLOCK=BLOCK)
    return out
