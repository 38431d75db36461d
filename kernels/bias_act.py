"""Triton backend of bias_act (`progan_fast.ops.bias_act`): y = act(x + bias) and its gradients.

The bias is broadcast along one dim of a dense tensor of any layout: the element at memory offset o has index
(o // stride[dim]) % size[dim] along that dim, so NCHW, channels_last and [N, features] run without copies.
The LeakyReLU gradient is taken from the sign of the saved output y (y > 0 exactly where x + bias > 0 for a
slope >= 0), so the backward never needs x.

Both passes are opaque custom ops, so torch.compile traces models through their fake implementations. The
backward op is differentiable itself (dx = dy * mask(y) is linear in dy: its adjoint is the same product, and the
mask is piecewise constant in y), so D's gradient penalty takes a double backward through it.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from progan_fast.kernels._common import BLOCK, check_kernel_dtypes, dense, elementwise_grid, elementwise_operands
from progan_fast.ops._checks import check_sign_mask_slope
from progan_fast.ops.bias_act import bias_act_op, channel_sums


@triton.jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, numel, channel_stride, channels, negative_slope,
                         HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(b_ptr + (offs // channel_stride) % channels, mask=mask, other=0.0).to(tl.float32)
    if LRELU:
        v = tl.where(v > 0, v, v * negative_slope)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(dy_ptr, y_ptr, dx_ptr, numel, negative_slope, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # the interpreter compares raw bf16 bits
    dx = tl.where(y > 0, dy, dy * negative_slope)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("progan_fast::bias_act", mutates_args=())
def _bias_act_forward(x: torch.Tensor, bias: Optional[torch.Tensor], lrelu: bool, negative_slope: float,
                      dim: int) -> torch.Tensor:
    x = dense(x)
    y = torch.empty_like(x)
    bias_ptr = bias.contiguous() if bias is not None else x  # x: an unread placeholder pointer
    if x.numel():
        _bias_act_fwd_kernel[elementwise_grid(x.numel())](
            x, bias_ptr, y, x.numel(), x.stride(dim), x.shape[dim], negative_slope,
            HAS_BIAS=bias is not None, LRELU=lrelu, BLOCK=BLOCK)
    return y


@_bias_act_forward.register_fake
def _(x, bias, lrelu, negative_slope, dim):
    return torch.empty_like(dense(x))


@torch.library.custom_op("progan_fast::bias_act_backward", mutates_args=())
def _bias_act_backward(dy: torch.Tensor, y: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """dx = dy where y > 0, else dy * negative_slope; dx has y's layout and dy's dtype."""
    y, dy, dx = elementwise_operands(y, dy)
    if y.numel():
        _bias_act_bwd_kernel[elementwise_grid(y.numel())](dy, y, dx, y.numel(), negative_slope, BLOCK=BLOCK)
    return dx


@_bias_act_backward.register_fake
def _(dy, y, negative_slope):
    return torch.empty_like(dense(y), dtype=dy.dtype)


def _save_output(ctx, inputs, output):
    _, bias, ctx.lrelu, ctx.negative_slope, ctx.dim = inputs
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(output if ctx.lrelu else None)


def _bias_act_forward_grad(ctx, dy):
    y, = ctx.saved_tensors
    dx = _bias_act_backward(dy, y, ctx.negative_slope) if ctx.lrelu else dy
    db = None if ctx.bias_dtype is None else channel_sums(dx, ctx.dim).to(ctx.bias_dtype)
    return dx, db, None, None, None


def _save_mask_source(ctx, inputs, output):
    _, y, ctx.negative_slope = inputs
    ctx.save_for_backward(y)


def _bias_act_backward_grad(ctx, grad):
    y, = ctx.saved_tensors
    return _bias_act_backward(grad, y, ctx.negative_slope), None, None


_bias_act_forward.register_autograd(_bias_act_forward_grad, setup_context=_save_output)
_bias_act_backward.register_autograd(_bias_act_backward_grad, setup_context=_save_mask_source)


def bias_act_triton(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                    negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """The triton implementation of bias_act (also the epilogue of equalized_linear's triton path)."""
    if bias is None and activation is None:
        return x
    check_kernel_dtypes("bias_act", x, bias)
    check_sign_mask_slope("bias_act", "triton", activation, negative_slope)
    return _bias_act_forward(x, bias, activation == "lrelu", float(negative_slope), dim % x.dim())


bias_act_op.register("triton", bias_act_triton)
