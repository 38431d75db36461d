"""Triton backend of minibatch_stddev (`progan_fast.ops.minibatch_stddev`): out [N, C+1, H, W] = [x, per-group
mean stddev], and its input gradient.

Groups: sample i belongs to group m = i % M (M = N / G), as in the official [G, M, C, H, W] reshape; the
whole-batch variant is G = N, M = 1 with the unbiased variance (divisor G - 1 instead of G).

Forward: a program owns one group m and a chunk of the C*H*W positions; its [G, BLOCK] tile holds every
sample of the group at those positions, so x is read once. It copies the tile into out[:, :C] (no separate
torch.cat) and writes the sum over the chunk of sqrt(var + eps) (fp32) to a partial buffer; a second kernel
sums the partials of each group and fills the stddev channel. Backward, with t_m the gradient summed over
the stddev channel of group m: dx = grad[:, :C] + t_m / (C*H*W) * (x - mean) / (divisor * std), where x is
read from the saved output (out[:, :C]), so the input itself is not kept.

Opaque custom ops, so torch.compile traces D through their fake implementations. The group size travels resolved
(G = min(group_size, N), or N for the whole batch with `unbiased`). The backward op's own backward, needed by the
gradient penalty's double backward, recomputes the first-order gradient with the torch reference and
differentiates it (second order only, on the small 4x4 map of D's last block).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from progan_fast.kernels._common import check_kernel_dtypes, nchw_index, tile_shape
from progan_fast.layout import empty_4d, is_channels_last
from progan_fast.ops.minibatch_stddev import effective_group_size, minibatch_stddev_op, minibatch_stddev_reference


@triton.jit
def _group_tile(m, chunk, G, M, C, H, W, CHW, CHANNELS_LAST: tl.constexpr, BLOCK_G: tl.constexpr,
                BLOCK: tl.constexpr):
    """Samples of group m, the (c, h, w) of the chunk's positions, and the tile mask."""
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    in_chunk = offs < CHW
    _, c, h, w = nchw_index(offs, C, H, W, CHANNELS_LAST)
    ranks = tl.arange(0, BLOCK_G)
    samples = (ranks * M + m).to(tl.int64)
    mask = (ranks < G)[:, None] & in_chunk[None, :]
    return samples, c, h, w, in_chunk, mask


@triton.jit
def _tile_offsets(samples, c, h, w, sn, sc, sh, sw):
    return samples[:, None] * sn + (c * sc + h * sh + w * sw)[None, :]


@triton.jit
def _group_stats(v, mask, G, divisor, eps):
    """(x - mean, std) over the samples (rows) of a fp32 tile."""
    mean = tl.sum(v, axis=0) / G
    centered = tl.where(mask, v - mean[None, :], 0.0)
    std = tl.sqrt(tl.sum(centered * centered, axis=0) / divisor + eps)
    return centered, std


@triton.jit
def _mbstd_fwd_kernel(x_ptr, out_ptr, partial_ptr, G, M, C, H, W, CHW, num_chunks,
                      sxn, sxc, sxh, sxw, son, soc, soh, sow, divisor, eps,
                      CHANNELS_LAST: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK: tl.constexpr):
    chunk = tl.program_id(0)  # axis 0: CUDA caps axes 1 and 2 at 65535, and C*H*W / BLOCK can exceed that
    m = tl.program_id(1)
    samples, c, h, w, in_chunk, mask = _group_tile(m, chunk, G, M, C, H, W, CHW, CHANNELS_LAST, BLOCK_G, BLOCK)
    v = tl.load(x_ptr + _tile_offsets(samples, c, h, w, sxn, sxc, sxh, sxw), mask=mask, other=0.0)
    tl.store(out_ptr + _tile_offsets(samples, c, h, w, son, soc, soh, sow), v, mask=mask)
    _, std = _group_stats(v.to(tl.float32), mask, G, divisor, eps)
    tl.store(partial_ptr + m * num_chunks + chunk, tl.sum(tl.where(in_chunk, std, 0.0), axis=0))


@triton.jit
def _mbstd_fill_kernel(partial_ptr, out_ptr, M, C, HW, W, num_chunks, son, soc, soh, sow, inv_chw,
                       BLOCK_CHUNKS: tl.constexpr, BLOCK: tl.constexpr):
    sample = tl.program_id(0)
    chunks = tl.arange(0, BLOCK_CHUNKS)
    partials = tl.load(partial_ptr + (sample % M) * num_chunks + chunks, mask=chunks < num_chunks, other=0.0)
    feature = tl.zeros((BLOCK,), dtype=tl.float32) + tl.sum(partials, axis=0) * inv_chw
    channel = out_ptr + sample.to(tl.int64) * son + C * soc
    for p0 in range(0, HW, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        tl.store(channel + (p // W) * soh + (p % W) * sow, feature.to(out_ptr.dtype.element_ty), mask=p < HW)


@triton.jit
def _mbstd_feature_grad_kernel(g_ptr, t_ptr, G, M, C, HW, W, sgn, sgc, sgh, sgw,
                               BLOCK_G: tl.constexpr, BLOCK: tl.constexpr):
    """t[m] = the gradient summed over the stddev channel of the samples of group m."""
    m = tl.program_id(0)
    ranks = tl.arange(0, BLOCK_G)
    samples = (ranks * M + m).to(tl.int64)
    acc = tl.zeros((BLOCK_G, BLOCK), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        mask = (ranks < G)[:, None] & (p < HW)[None, :]
        offsets = samples[:, None] * sgn + C * sgc + ((p // W) * sgh + (p % W) * sgw)[None, :]
        acc += tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(t_ptr + m, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _mbstd_bwd_kernel(g_ptr, out_ptr, t_ptr, dx_ptr, G, M, C, H, W, CHW,
                      sgn, sgc, sgh, sgw, son, soc, soh, sow, sdn, sdc, sdh, sdw, divisor, eps, inv_chw,
                      CHANNELS_LAST: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    m = tl.program_id(1)
    samples, c, h, w, _, mask = _group_tile(m, chunk, G, M, C, H, W, CHW, CHANNELS_LAST, BLOCK_G, BLOCK)
    x = tl.load(out_ptr + _tile_offsets(samples, c, h, w, son, soc, soh, sow), mask=mask, other=0.0)
    centered, std = _group_stats(x.to(tl.float32), mask, G, divisor, eps)
    g = tl.load(g_ptr + _tile_offsets(samples, c, h, w, sgn, sgc, sgh, sgw), mask=mask, other=0.0)
    coefficient = tl.load(t_ptr + m) * inv_chw / divisor
    dx = g.to(tl.float32) + coefficient * centered / std[None, :]
    tl.store(dx_ptr + _tile_offsets(samples, c, h, w, sdn, sdc, sdh, sdw), dx.to(dx_ptr.dtype.element_ty), mask=mask)


# Warps of the [group, chunk] tile programs: 16 of its 4096 elements per thread (with 32, an NCHW tile spills
# registers on sm_90 with triton 3.6's ptxas; tests/hopper_compile.py).
_TILE_WARPS = 8


def _output_like(x: torch.Tensor) -> torch.Tensor:
    """The [N, C+1, H, W] output in x's memory format; in channels_last with 16-element aligned pixels, so that
    the conv after it (D's 4x4 conv, 513 input channels) reads it with vector loads."""
    n, c, h, w = x.shape
    return empty_4d((n, c + 1, h, w), x, aligned_pixels=True)


def _launch_shape(group_size: int, chw: int):
    block_g, block = tile_shape(group_size)
    block = min(block, triton.next_power_of_2(chw))
    return block_g, block, triton.cdiv(chw, block)


def _divisor(group_size: int, unbiased: bool) -> float:
    return float(group_size - 1 if unbiased else group_size)


@torch.library.custom_op("progan_fast::minibatch_stddev", mutates_args=())
def _minibatch_stddev_forward(x: torch.Tensor, group_size: int, unbiased: bool, eps: float) -> torch.Tensor:
    n, c, h, w = x.shape
    out = _output_like(x)
    groups, chw = n // group_size, c * h * w
    block_g, block, num_chunks = _launch_shape(group_size, chw)
    partial = torch.empty((groups, num_chunks), dtype=torch.float32, device=x.device)
    layout = dict(CHANNELS_LAST=is_channels_last(out))
    _mbstd_fwd_kernel[(num_chunks, groups)](x, out, partial, group_size, groups, c, h, w, chw, num_chunks,
                                            *x.stride(), *out.stride(), _divisor(group_size, unbiased), eps,
                                            BLOCK_G=block_g, BLOCK=block, num_warps=_TILE_WARPS, **layout)
    fill_block = min(1024, triton.next_power_of_2(h * w))
    _mbstd_fill_kernel[(n,)](partial, out, groups, c, h * w, w, num_chunks, *out.stride(), 1.0 / chw,
                             BLOCK_CHUNKS=triton.next_power_of_2(num_chunks), BLOCK=fill_block)
    return out


@_minibatch_stddev_forward.register_fake
def _(x, group_size, unbiased, eps):
    return _output_like(x)


@torch.library.custom_op("progan_fast::minibatch_stddev_backward", mutates_args=())
def _minibatch_stddev_backward(grad: torch.Tensor, out: torch.Tensor, group_size: int, unbiased: bool,
                               eps: float) -> torch.Tensor:
    n, c_out, h, w = out.shape
    c = c_out - 1
    groups, chw = n // group_size, c * h * w
    block_g, block, num_chunks = _launch_shape(group_size, chw)
    feature_grad = torch.empty(groups, dtype=torch.float32, device=out.device)
    _mbstd_feature_grad_kernel[(groups,)](grad, feature_grad, group_size, groups, c, h * w, w, *grad.stride(),
                                          BLOCK_G=block_g, BLOCK=min(block, triton.next_power_of_2(h * w)))
    dx = empty_4d((n, c, h, w), out)
    _mbstd_bwd_kernel[(num_chunks, groups)](grad, out, feature_grad, dx, group_size, groups, c, h, w, chw,
                                            *grad.stride(), *out.stride(), *dx.stride(),
                                            _divisor(group_size, unbiased), eps, 1.0 / chw,
                                            CHANNELS_LAST=is_channels_last(dx), BLOCK_G=block_g, BLOCK=block,
                                            num_warps=_TILE_WARPS)
    return dx


@_minibatch_stddev_backward.register_fake
def _(grad, out, group_size, unbiased, eps):
    n, c, h, w = out.shape
    return empty_4d((n, c - 1, h, w), out)


def _save_output(ctx, inputs, output):
    ctx.group_size, ctx.unbiased, ctx.eps = inputs[-3:]
    ctx.save_for_backward(output)


def _minibatch_stddev_forward_grad(ctx, grad):
    out, = ctx.saved_tensors
    return _minibatch_stddev_backward(grad, out, ctx.group_size, ctx.unbiased, ctx.eps), None, None, None


def _save_grad_and_output(ctx, inputs, output):
    ctx.group_size, ctx.unbiased, ctx.eps = inputs[-3:]
    ctx.save_for_backward(inputs[0], inputs[1])


def _minibatch_stddev_backward_grad(ctx, grad_of_dx):
    grad, out = ctx.saved_tensors
    with torch.enable_grad():
        x = out[:, :-1].detach().requires_grad_()
        grad = grad.detach().requires_grad_()
        y = minibatch_stddev_reference(x, None if ctx.unbiased else ctx.group_size, ctx.eps)
        dx, = torch.autograd.grad(y, x, grad, create_graph=True)
        d_grad, d_x = torch.autograd.grad(dx, (grad, x), grad_of_dx)
    d_out = torch.cat([d_x, torch.zeros_like(out[:, -1:])], dim=1)  # dx does not read the stddev channel
    return d_grad, d_out, None, None, None


_minibatch_stddev_forward.register_autograd(_minibatch_stddev_forward_grad, setup_context=_save_output)
_minibatch_stddev_backward.register_autograd(_minibatch_stddev_backward_grad, setup_context=_save_grad_and_output)


def minibatch_stddev_triton(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    check_kernel_dtypes("minibatch_stddev", x)
    return _minibatch_stddev_forward(x, effective_group_size(x.shape[0], group_size), group_size is None,
                                     float(eps))


minibatch_stddev_op.register("triton", minibatch_stddev_triton)
