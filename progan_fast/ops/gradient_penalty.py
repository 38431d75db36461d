"""gradient_penalty: the WGAN-GP term weight * mean_n((||g_n||_2 - target)^2) of an input gradient g.

g is grad_x D(x_hat) built with create_graph=True, so the penalty's backward reaches D's parameters
through a double backward. Norms are taken in fp32. Reference: `gradient_penalty_reference`.

cuda backend (csrc/gradient_penalty.cu): one pass over g gives the penalty and the per-sample gradient
coefficients coef_n = 2 weight (||g_n|| - target) / (N ||g_n||); the backward writes coef_n * g_n. The
penalty is the end of the graph, so its backward is once-differentiable (a third derivative of D would need
more).
"""
from __future__ import annotations

import torch

from ..backend import KERNEL_DTYPES, Op
from ..cuda_extension import cuda_kernels
from ._checks import accumulation_dtype, check_floating


def gradient_penalty_reference(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    norms = torch.linalg.vector_norm(grad.flatten(1).to(accumulation_dtype(grad.dtype)), dim=1)
    return weight * (norms - target).square().mean()


_op = Op("gradient_penalty", gradient_penalty_reference)


class GradientPenaltyFormulas:
    """What the gradient-penalty kernels compute, in plain torch."""

    @staticmethod
    def gradient_penalty_forward(grad, weight, target):
        norms = torch.linalg.vector_norm(grad.flatten(1).to(accumulation_dtype(grad.dtype)), dim=1)
        coef = torch.where(norms > 0, 2 * weight * (norms - target) / (norms.numel() * norms), 0.0)
        return weight * (norms - target).square().mean(), coef

    @staticmethod
    def gradient_penalty_backward(grad, coef, grad_penalty):
        scale = (coef * grad_penalty).reshape(-1, *[1] * (grad.dim() - 1))
        return (grad.to(coef.dtype) * scale).to(grad.dtype)


class _GradientPenaltyCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, weight, target, kernels):
        penalty, coef = kernels.gradient_penalty_forward(grad, weight, target)
        ctx.kernels = kernels
        ctx.save_for_backward(grad, coef)
        return penalty

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_penalty):
        grad, coef = ctx.saved_tensors
        return ctx.kernels.gradient_penalty_backward(grad, coef, grad_penalty), None, None, None


def gradient_penalty_cuda(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0,
                          kernels=None) -> torch.Tensor:
    """The cuda backend; kernels: the extension's by default, GradientPenaltyFormulas for plain torch."""
    if kernels is None and grad.dtype not in KERNEL_DTYPES:
        return gradient_penalty_reference(grad, weight, target)
    return _GradientPenaltyCuda.apply(grad, float(weight), float(target), kernels or cuda_kernels())


_op.register("cuda", gradient_penalty_cuda)


def gradient_penalty(grad: torch.Tensor, weight: float = 10.0, target: float = 1.0) -> torch.Tensor:
    """Scalar penalty from per-sample L2 norms of grad [N, ...] (official: weight 10, target 1)."""
    check_floating("gradient_penalty", grad)
    if grad.dim() < 2:
        raise ValueError(f"gradient_penalty expects a per-sample gradient [N, ...], got shape {tuple(grad.shape)}")
    return _op(grad, weight, target)
