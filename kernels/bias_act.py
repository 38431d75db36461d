"""Triton kernels of bias_act: y = act(x + bias) and its input gradient.

The bias is broadcast along one dim of a dense tensor of any layout: the element at memory offset o has index
(o // stride[dim]) % size[dim] along that dim, so NCHW, channels_last and [N, features] run without copies.
The LeakyReLU gradient is taken from the sign of the saved output y (y > 0 exactly where x + bias > 0 for a
slope >= 0), so the backward never needs x.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import BLOCK, check_inputs, dense, elementwise_grid, elementwise_operands


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
def _lrelu_grad_kernel(dy_ptr, y_ptr, dx_ptr, numel, negative_slope, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # the interpreter compares raw bf16 bits
    dx = tl.where(y > 0, dy, dy * negative_slope)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def bias_act_forward(x: torch.Tensor, bias: Optional[torch.Tensor], lrelu: bool, negative_slope: float,
                     dim: int) -> torch.Tensor:
    check_inputs("bias_act", x, bias)
    x = dense(x)
    y = torch.empty_like(x)
    bias_ptr = bias.contiguous() if bias is not None else x  # x: an unread placeholder pointer
    if x.numel():
        _bias_act_fwd_kernel[elementwise_grid(x.numel())](
            x, bias_ptr, y, x.numel(), x.stride(dim), x.shape[dim], negative_slope,
            HAS_BIAS=bias is not None, LRELU=lrelu, BLOCK=BLOCK)
    return y


def lrelu_grad(dy: torch.Tensor, y: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """dx = dy where y > 0, else dy * negative_slope; dx has y's layout and dy's dtype."""
    y, dy, dx = elementwise_operands("bias_act backward", y, dy)
    if y.numel():
        _lrelu_grad_kernel[elementwise_grid(y.numel())](dy, y, dx, y.numel(), negative_slope, BLOCK=BLOCK)
    return dx
