"""CUDA backend of bias_act (`progan_fast.ops.bias_act`): custom ops over the kernels of bias_act.cu.

As in StyleGAN2-ADA's bias_act, the forward saves y, never x: the LeakyReLU mask is the sign of y (so
negative_slope >= 0). The gradient (dy, y) -> (dx = mask(y) dy, db = sum dx) and its adjoint
(g, b, y) -> (g + b[c]) mask(y) are each other's backward, so create_graph works to any order and the gradient
penalty's double backward runs the fused adjoint kernel.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from progan_fast.csrc import extension
from progan_fast.ops._checks import check_sign_mask_slope
from progan_fast.ops.bias_act import bias_act_op, bias_act_reference, channel_sums


@torch.library.custom_op("progan_fast::cuda_bias_act", mutates_args=())
def _bias_act_forward(x: torch.Tensor, bias: Optional[torch.Tensor], lrelu: bool, negative_slope: float,
                      dim: int) -> torch.Tensor:
    return extension.cuda_kernels().bias_act_forward(x, bias, negative_slope if lrelu else 1.0, dim)


@torch.library.custom_op("progan_fast::cuda_lrelu_grad", mutates_args=())
def _lrelu_grad(dy: torch.Tensor, y: torch.Tensor, negative_slope: float, dim: int,
                with_bias: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dx = mask(y) * dy, db = per-channel sums of dx; empty without bias)."""
    dx = extension.cuda_kernels().lrelu_masked_grad(dy, None, y, negative_slope, dim)
    return dx, channel_sums(dx, dim) if with_bias else dx.new_empty(0)


@torch.library.custom_op("progan_fast::cuda_lrelu_masked_grad", mutates_args=())
def _lrelu_masked_grad(grad: torch.Tensor, bias: Optional[torch.Tensor], y: torch.Tensor, negative_slope: float,
                       dim: int) -> torch.Tensor:
    """(grad + bias[c]) * mask(y): the adjoint of _lrelu_grad; bias may be None."""
    return extension.cuda_kernels().lrelu_masked_grad(grad, bias, y, negative_slope, dim)


@_bias_act_forward.register_fake
def _(x, bias, lrelu, negative_slope, dim):
    return torch.empty_like(x)


@_lrelu_grad.register_fake
def _(dy, y, negative_slope, dim, with_bias):
    dx = torch.empty_like(y, dtype=dy.dtype)
    return dx, channel_sums(dx, dim) if with_bias else dx.new_empty(0)


@_lrelu_masked_grad.register_fake
def _(grad, bias, y, negative_slope, dim):
    return torch.empty_like(y, dtype=grad.dtype)


def _save_output(ctx, inputs, output):
    _, bias, ctx.lrelu, ctx.negative_slope, ctx.dim = inputs
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(output if ctx.lrelu else None)


def _bias_act_forward_grad(ctx, dy):
    y, = ctx.saved_tensors
    with_bias = ctx.needs_input_grad[1]
    if ctx.lrelu:
        dx, db = _lrelu_grad(dy, y, ctx.negative_slope, ctx.dim, with_bias)
    else:
        dx, db = dy, channel_sums(dy, ctx.dim)
    return dx, db.to(ctx.bias_dtype) if with_bias else None, None, None, None


def _save_lrelu_grad_inputs(ctx, inputs, output):
    _, y, ctx.negative_slope, ctx.dim, ctx.with_bias = inputs
    ctx.save_for_backward(y)


def _lrelu_grad_grad(ctx, grad_dx, grad_db):
    y, = ctx.saved_tensors
    bias = grad_db if ctx.with_bias else None
    return _lrelu_masked_grad(grad_dx, bias, y, ctx.negative_slope, ctx.dim), None, None, None, None


def _save_masked_grad_inputs(ctx, inputs, output):
    _, bias, y, ctx.negative_slope, ctx.dim = inputs
    ctx.with_bias = bias is not None
    ctx.save_for_backward(y)


def _lrelu_masked_grad_grad(ctx, grad_out):
    y, = ctx.saved_tensors
    grad, grad_bias = _lrelu_grad(grad_out, y, ctx.negative_slope, ctx.dim, ctx.with_bias)
    return grad, grad_bias if ctx.with_bias else None, None, None, None


_bias_act_forward.register_autograd(_bias_act_forward_grad, setup_context=_save_output)
_lrelu_grad.register_autograd(_lrelu_grad_grad, setup_context=_save_lrelu_grad_inputs)
_lrelu_masked_grad.register_autograd(_lrelu_masked_grad_grad, setup_context=_save_masked_grad_inputs)


def bias_act_cuda(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                  negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """The cuda implementation of bias_act, also the epilogue of the cuda equalized_conv2d / _linear."""
    if bias is None and activation is None:
        return x
    if x.dtype not in extension.cuda_kernels().dtypes:
        return bias_act_reference(x, bias, activation, negative_slope, dim)
    check_sign_mask_slope("bias_act", "cuda", activation, negative_slope)
    return _bias_act_forward(x, bias, activation == "lrelu", float(negative_slope), dim % x.dim())


bias_act_op.register("cuda", bias_act_cuda)
