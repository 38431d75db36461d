"""bias_act: add a per-channel bias, then an optional LeakyReLU.

Reference: `bias_act_reference`. Used on its own after the 4x4 dense layer of G, and inside the
equalized conv / linear ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import Op
from ._checks import check_activation, check_floating, check_same_device, check_sign_mask_slope


def _channel_view(v: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = -1
    return v.to(x.dtype).reshape(shape)


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-channel sums (fp32 at least) over every dim but `dim`."""
    others = [d for d in range(t.dim()) if d != dim]
    dtype = torch.promote_types(t.dtype, torch.float32)
    return t.sum(others, dtype=dtype) if others else t.to(dtype)


def bias_act_reference(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                       negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    if bias is not None:
        x = x + _channel_view(bias, x, dim)
    if activation == "lrelu":
        x = F.leaky_relu(x, negative_slope)
    return x


_op = Op("bias_act", bias_act_reference)


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
             negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """``activation(x + bias)`` with the bias broadcast along ``dim``; activation None/'linear' or 'lrelu'."""
    activation = check_activation(activation)
    check_floating("bias_act", x)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"bias_act: dim {dim} is out of range for x of shape {tuple(x.shape)}; the bias runs "
                         f"along dim (1 for [N, C, ...], -1 for [..., features])")
    check_same_device("bias_act", x, bias)
    if bias is not None and (bias.dim() != 1 or bias.numel() != x.shape[dim]):
        raise ValueError(f"bias_act: bias must have shape [{x.shape[dim]}] (size of dim {dim} of x), "
                         f"got {tuple(bias.shape)}")
    return _op(x, bias, activation, negative_slope, dim)


# --- triton backend --------------------------------------------------------------------------------------
# Opaque custom ops, so torch.compile traces models through their fake implementations. The gradient op is
# differentiable itself (dx = dy * mask(y) is linear in dy: its adjoint is the same product, and the mask
# is piecewise constant in y), so D's gradient penalty takes a double backward through it.

@torch.library.custom_op("progan_fast::bias_act", mutates_args=())
def _bias_act_triton_op(x: torch.Tensor, bias: Optional[torch.Tensor], lrelu: bool, negative_slope: float,
                        dim: int) -> torch.Tensor:
    from ..kernels.bias_act import bias_act_forward
    return bias_act_forward(x, bias, lrelu, negative_slope, dim)


@_bias_act_triton_op.register_fake
def _bias_act_fake(x, bias, lrelu, negative_slope, dim):
    from ..kernels._common import dense
    return torch.empty_like(dense(x))


@torch.library.custom_op("progan_fast::lrelu_grad", mutates_args=())
def _lrelu_grad_op(dy: torch.Tensor, y: torch.Tensor, negative_slope: float) -> torch.Tensor:
    from ..kernels.bias_act import lrelu_grad
    return lrelu_grad(dy, y, negative_slope)


@_lrelu_grad_op.register_fake
def _lrelu_grad_fake(dy, y, negative_slope):
    from ..kernels._common import dense
    return torch.empty_like(dense(y), dtype=dy.dtype)


def _lrelu_grad_setup(ctx, inputs, output):
    _, y, ctx.negative_slope = inputs
    ctx.save_for_backward(y)


def _lrelu_grad_backward(ctx, grad):
    y, = ctx.saved_tensors
    return _lrelu_grad_op(grad, y, ctx.negative_slope), None, None


_lrelu_grad_op.register_autograd(_lrelu_grad_backward, setup_context=_lrelu_grad_setup)


def _bias_act_setup(ctx, inputs, output):
    _, bias, ctx.lrelu, ctx.negative_slope, ctx.dim = inputs
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(output if ctx.lrelu else None)


def _bias_act_backward(ctx, dy):
    y, = ctx.saved_tensors
    dx = _lrelu_grad_op(dy, y, ctx.negative_slope) if ctx.lrelu else dy
    db = None if ctx.bias_dtype is None else _sum_except(dx, ctx.dim).to(ctx.bias_dtype)
    return dx, db, None, None, None


_bias_act_triton_op.register_autograd(_bias_act_backward, setup_context=_bias_act_setup)


def bias_act_triton(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                    negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """The triton backend of bias_act (also the epilogue of equalized_linear's triton path)."""
    if bias is None and activation is None:
        return x
    check_sign_mask_slope("bias_act", "triton", activation, negative_slope)
    lrelu = activation == "lrelu"
    return _bias_act_triton_op(x, bias, lrelu, float(negative_slope), dim % x.dim())


_op.register("triton", bias_act_triton)


# --- cuda backend ------------------------------------------------------------------------------------------
# Autograd Functions over the kernels of csrc/bias_act.cu, in the manner of StyleGAN2-ADA's bias_act: the
# forward saves y, never x (the LeakyReLU mask is the sign of y, so negative_slope >= 0). The gradient
# (dy, y) -> (dx = mask(y) dy, db = sum dx) and its adjoint (g, b, y) -> (g + b[c]) mask(y) are each
# other's backward, so create_graph works to any order and the gradient penalty's double backward runs
# the fused adjoint kernel. `kernels` is the extension (progan_fast.cuda_extension.cuda_kernels()) or
# BiasActFormulas, the same math in plain torch that the tests hold the Functions and kernels to.

class BiasActFormulas:
    """What the bias_act kernels compute, in plain torch."""

    @staticmethod
    def bias_act_forward(x, bias, slope, dim):
        if bias is not None:
            x = x + _channel_view(bias, x, dim)
        return torch.where(x > 0, x, x * slope)

    @staticmethod
    def lrelu_masked_grad(grad, bias, y, slope, dim):
        if bias is not None:
            grad = grad + _channel_view(bias, grad, dim)
        return torch.where(y > 0, grad, grad * slope)


class _LReLUGrad(torch.autograd.Function):
    """(dy, y) -> dx = mask(y) * dy, plus db = sum of dx per channel when with_bias."""

    @staticmethod
    def forward(ctx, dy, y, slope, dim, with_bias, kernels):
        ctx.slope, ctx.dim, ctx.kernels = slope, dim, kernels
        ctx.save_for_backward(y)
        dx = kernels.lrelu_masked_grad(dy, None, y, slope, dim)
        return (dx, _sum_except(dx, dim)) if with_bias else dx

    @staticmethod
    def backward(ctx, grad_dx, grad_db=None):
        y, = ctx.saved_tensors
        grad_dy = _LReLUGradAdjoint.apply(grad_dx, grad_db, y, ctx.slope, ctx.dim, ctx.kernels)
        return grad_dy, None, None, None, None, None


class _LReLUGradAdjoint(torch.autograd.Function):
    """(g, b, y) -> (g + b[c]) * mask(y); b may be None."""

    @staticmethod
    def forward(ctx, grad, bias, y, slope, dim, kernels):
        ctx.slope, ctx.dim, ctx.kernels = slope, dim, kernels
        ctx.save_for_backward(y)
        return kernels.lrelu_masked_grad(grad, bias, y, slope, dim)

    @staticmethod
    def backward(ctx, grad_out):
        y, = ctx.saved_tensors
        with_bias = ctx.needs_input_grad[1]
        grads = _LReLUGrad.apply(grad_out, y, ctx.slope, ctx.dim, with_bias, ctx.kernels)
        grad, grad_bias = grads if with_bias else (grads, None)
        return grad, grad_bias, None, None, None, None


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, lrelu, slope, dim, kernels):
        y = kernels.bias_act_forward(x, bias, slope if lrelu else 1.0, dim)
        ctx.lrelu, ctx.slope, ctx.dim, ctx.kernels = lrelu, slope, dim, kernels
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(y if lrelu else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, = ctx.saved_tensors
        with_bias = ctx.needs_input_grad[1]
        if ctx.lrelu:
            grads = _LReLUGrad.apply(dy, y, ctx.slope, ctx.dim, with_bias, ctx.kernels)
            dx, db = grads if with_bias else (grads, None)
        else:
            dx, db = dy, _sum_except(dy, ctx.dim) if with_bias else None
        return dx, None if db is None else db.to(ctx.bias_dtype), None, None, None, None


def bias_act_cuda(x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None,
                  negative_slope: float = 0.2, dim: int = 1, kernels=None) -> torch.Tensor:
    """The cuda backend of bias_act, also the epilogue of the cuda paths of equalized_conv2d / _linear.

    kernels: the extension's kernels by default; BiasActFormulas runs the same Functions in plain torch.
    """
    from ..backend import KERNEL_DTYPES
    from ..cuda_extension import cuda_kernels
    if bias is None and activation is None:
        return x
    if kernels is None and x.dtype not in KERNEL_DTYPES:
        return bias_act_reference(x, bias, activation, negative_slope, dim)
    check_sign_mask_slope("bias_act", "cuda", activation, negative_slope)
    lrelu = activation == "lrelu"
    return _BiasActCuda.apply(x, bias, lrelu, float(negative_slope), dim % x.dim(), kernels or cuda_kernels())


_op.register("cuda", bias_act_cuda)
