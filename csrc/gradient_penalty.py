"""CUDA backend of gradient_penalty (`progan_fast.ops.gradient_penalty`): a custom op over the kernels of
gradient_penalty.cu.

One pass over g gives the penalty and the per-sample gradient coefficients coef_n = 2 weight (||g_n|| - target) /
(N ||g_n||); the backward writes coef_n * g_n. The penalty is the end of the graph, so its backward is
once-differentiable (a third derivative of D would need more).
"""
from __future__ import annotations

from typing import Tuple

import torch

from progan_fast.csrc import extension
from progan_fast.ops._checks import accumulation_dtype
from progan_fast.ops.gradient_penalty import gradient_penalty_op, gradient_penalty_reference


@torch.library.custom_op("progan_fast::cuda_gradient_penalty", mutates_args=())
def _gradient_penalty_forward(grad: torch.Tensor, weight: float, target: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(penalty, coef)."""
    return extension.cuda_kernels().gradient_penalty_forward(grad, weight, target)


@_gradient_penalty_forward.register_fake
def _(grad, weight, target):
    dtype = accumulation_dtype(grad.dtype)
    return grad.new_empty((), dtype=dtype), grad.new_empty(grad.shape[0], dtype=dtype)


def _save_gradient_and_coefficients(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(inputs[0], output[1])


@torch.autograd.function.once_differentiable
def _gradient_penalty_forward_grad(ctx, grad_penalty, _grad_of_coef):
    grad, coef = ctx.saved_tensors
    return extension.cuda_kernels().gradient_penalty_backward(grad, coef, grad_penalty), None, None


_gradient_penalty_forward.register_autograd(_gradient_penalty_forward_grad,
                                            setup_context=_save_gradient_and_coefficients)


def gradient_penalty_cuda(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    if grad.dtype not in extension.cuda_kernels().dtypes:
        return gradient_penalty_reference(grad, weight, target)
    return _gradient_penalty_forward(grad, float(weight), float(target))[0]


gradient_penalty_op.register("cuda", gradient_penalty_cuda)
