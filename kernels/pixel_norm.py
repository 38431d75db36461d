"""Triton backend of pixel_norm (`progan_fast.ops.pixel_norm`): y = x * r with r = rsqrt(mean_c(x^2) + eps) per
pixel, and its input gradient.

The tensor is viewed as [N, C, S] (S = all trailing dims) and addressed through strides, so NCHW,
channels_last and the latent [N, C] need no copy. A program owns BLOCK_P pixels and loops over the channels
twice (statistic, then output), so any C fits. The forward also returns r (fp32, [N, S]): the backward
dx = r * (dy - y * mean_c(dy * y)) then needs only y and r, never x.

Opaque custom ops, so torch.compile traces G through their fake implementations. First order only: G needs no
double backward.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from progan_fast.kernels._common import TILE_ELEMENTS, block_of, check_kernel_dtypes
from progan_fast.ops.pixel_norm import pixel_norm_op

_BLOCK_C_MAX = 64


@triton.jit
def _channel_tile(c0, p_ok, C, BLOCK_C: tl.constexpr):
    """Channels c0 .. c0 + BLOCK_C and the [pixels, channels] mask."""
    cs = c0 + tl.arange(0, BLOCK_C)
    return cs, p_ok[:, None] & (cs < C)[None, :]


@triton.jit
def _pixel_norm_fwd_kernel(x_ptr, y_ptr, r_ptr, C, S, num_pixels, sxn, sxc, sxs, syn, syc, sys, eps,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pixels, p_ok = block_of(num_pixels, BLOCK_P)
    n, s = (pixels // S).to(tl.int64), pixels % S
    x_pix = x_ptr + n * sxn + s * sxs
    y_pix = y_ptr + n * syn + s * sys
    sum_sq = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs, mask = _channel_tile(c0, p_ok, C, BLOCK_C)
        v = tl.load(x_pix[:, None] + cs[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
        sum_sq += tl.sum(v * v, axis=1)
    r = 1.0 / tl.sqrt(sum_sq / C + eps)
    tl.store(r_ptr + pixels, r, mask=p_ok)
    for c0 in range(0, C, BLOCK_C):
        cs, mask = _channel_tile(c0, p_ok, C, BLOCK_C)
        v = tl.load(x_pix[:, None] + cs[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_pix[:, None] + cs[None, :] * syc, (v * r[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_norm_bwd_kernel(dy_ptr, y_ptr, r_ptr, dx_ptr, C, S, num_pixels, sdn, sdc, sds, syn, syc, sys,
                           sxn, sxc, sxs, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pixels, p_ok = block_of(num_pixels, BLOCK_P)
    n, s = (pixels // S).to(tl.int64), pixels % S
    dy_pix = dy_ptr + n * sdn + s * sds
    y_pix = y_ptr + n * syn + s * sys
    dx_pix = dx_ptr + n * sxn + s * sxs
    dot = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs, mask = _channel_tile(c0, p_ok, C, BLOCK_C)
        dy = tl.load(dy_pix[:, None] + cs[None, :] * sdc, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_pix[:, None] + cs[None, :] * syc, mask=mask, other=0.0).to(tl.float32)
        dot += tl.sum(dy * y, axis=1)
    mean_dot = dot / C
    r = tl.load(r_ptr + pixels, mask=p_ok, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cs, mask = _channel_tile(c0, p_ok, C, BLOCK_C)
        dy = tl.load(dy_pix[:, None] + cs[None, :] * sdc, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_pix[:, None] + cs[None, :] * syc, mask=mask, other=0.0).to(tl.float32)
        dx = r[:, None] * (dy - y * mean_dot[:, None])
        tl.store(dx_pix[:, None] + cs[None, :] * sxc, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def pixel_views(x: torch.Tensor) -> torch.Tensor:
    """x as [N, C, S]: a view when the trailing dims merge (NCHW, channels_last), else a copy."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _empty_outputs(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y in the layout of x's [N, C, S] view, r fp32 [N, S])."""
    y = torch.empty_like(pixel_views(x)).view(x.shape)
    r = torch.empty((x.shape[0], pixel_views(x).shape[2]), dtype=torch.float32, device=x.device)
    return y, r


def _launch_shape(c: int, num_pixels: int) -> Tuple[int, int, Tuple[int]]:
    block_c = min(_BLOCK_C_MAX, triton.next_power_of_2(c))
    block_p = min(TILE_ELEMENTS // block_c, triton.next_power_of_2(num_pixels))
    return block_p, block_c, (triton.cdiv(num_pixels, block_p),)


@torch.library.custom_op("progan_fast::pixel_norm", mutates_args=())
def _pixel_norm_forward(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, r): r = the fp32 factors that the backward uses with y."""
    y, r = _empty_outputs(x)
    x3, y3 = pixel_views(x), pixel_views(y)
    num_pixels = r.numel()
    if num_pixels and x.shape[1]:
        block_p, block_c, grid = _launch_shape(x.shape[1], num_pixels)
        _pixel_norm_fwd_kernel[grid](x3, y3, r, x.shape[1], x3.shape[2], num_pixels, *x3.stride(), *y3.stride(),
                                     eps, BLOCK_P=block_p, BLOCK_C=block_c)
    return y, r


@_pixel_norm_forward.register_fake
def _(x, eps):
    return _empty_outputs(x)


@torch.library.custom_op("progan_fast::pixel_norm_backward", mutates_args=())
def _pixel_norm_backward(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    dx = torch.empty_like(y)
    dy3, y3, dx3 = pixel_views(dy), pixel_views(y), pixel_views(dx)
    num_pixels = r.numel()
    if num_pixels and y.shape[1]:
        block_p, block_c, grid = _launch_shape(y.shape[1], num_pixels)
        _pixel_norm_bwd_kernel[grid](dy3, y3, r, dx3, y.shape[1], y3.shape[2], num_pixels, *dy3.stride(),
                                     *y3.stride(), *dx3.stride(), BLOCK_P=block_p, BLOCK_C=block_c)
    return dx


@_pixel_norm_backward.register_fake
def _(dy, y, r):
    return torch.empty_like(y)


def _save_output(ctx, inputs, output):
    y, r = output
    ctx.mark_non_differentiable(r)
    ctx.save_for_backward(y, r)


def _pixel_norm_forward_grad(ctx, dy, _dr):
    y, r = ctx.saved_tensors
    return _pixel_norm_backward(dy, y, r), None


_pixel_norm_forward.register_autograd(_pixel_norm_forward_grad, setup_context=_save_output)


def pixel_norm_triton(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    check_kernel_dtypes("pixel_norm", x)
    return _pixel_norm_forward(x, float(eps))[0]


pixel_norm_op.register("triton", pixel_norm_triton)
