"""Test doubles of the CUDA extension: what each kernel of csrc/*.cu computes, in plain torch, behind the
extension's interface. The tests put them in place of the extension (`stand_in`) to run the cuda backend's custom
ops and autograd on CPU, in float64 for gradcheck; on a GPU they are the formulas the kernels are held to."""
import contextlib

import torch

from progan_fast.backend import KERNEL_DTYPES
from progan_fast.csrc import extension
from progan_fast.ops.bias_act import channel_view
from progan_fast.ops.gradient_penalty import per_sample_norms
from progan_fast.ops.minibatch_stddev import group_deviations


class Formulas:
    """Every kernel of the extension, in plain torch (float64 too, for gradient checks)."""

    dtypes = KERNEL_DTYPES + (torch.float64,)

    @staticmethod
    def bias_act_forward(x, bias, slope, dim):
        if bias is not None:
            x = x + channel_view(bias, x, dim)
        return torch.where(x > 0, x, x * slope)

    @staticmethod
    def lrelu_masked_grad(grad, bias, y, slope, dim):
        if bias is not None:
            grad = grad + channel_view(bias, grad, dim)
        return torch.where(y > 0, grad, grad * slope)

    @staticmethod
    def minibatch_stddev_stats(x, group_size, eps):
        return group_deviations(x, group_size, eps)[1].mean(dim=(1, 2, 3))

    @staticmethod
    def minibatch_stddev_backward(grad_out, x, grad_stats, group_size, eps):
        """grad_out[:, :C] + grad_stats[m] * d / (K G sd), K = C*H*W, d = x - group mean."""
        deviations, sd = group_deviations(x, group_size, eps)
        scale = grad_stats.reshape(1, -1, 1, 1, 1) / (sd[0].numel() * group_size)
        return (grad_out[:, :-1] + (scale * deviations / sd).reshape(x.shape)).to(x.dtype)

    @staticmethod
    def minibatch_stddev_double_backward(gg, x, grad_stats, group_size, eps):
        """With u = gg grad_stats[m] / (K G): (u - mean_g u) / sd - sum_g(u d) d / (G sd^3), and per group
        sum over g, c, h, w of gg d / (K G sd)."""
        deviations, sd = group_deviations(x, group_size, eps)
        gg = gg.to(deviations.dtype).reshape(deviations.shape)
        per_group = sd[0].numel() * group_size
        u = gg * grad_stats.reshape(1, -1, 1, 1, 1) / per_group
        grad_x = (u - u.mean(dim=0)) / sd - (u * deviations).sum(dim=0) * deviations / (group_size * sd ** 3)
        grad_stats2 = (gg * deviations / sd).sum(dim=(0, 2, 3, 4)) / per_group
        return grad_x.reshape(x.shape).to(x.dtype), grad_stats2

    @staticmethod
    def gradient_penalty_forward(grad, weight, target):
        norms = per_sample_norms(grad)
        coef = torch.where(norms > 0, 2 * weight * (norms - target) / (norms.numel() * norms), 0.0)
        return weight * (norms - target).square().mean(), coef

    @staticmethod
    def gradient_penalty_backward(grad, coef, grad_penalty):
        scale = (coef * grad_penalty).reshape(-1, *[1] * (grad.dim() - 1))
        return (grad.to(coef.dtype) * scale).to(grad.dtype)


@contextlib.contextmanager
def stand_in(kernels):
    """Run the cuda backend's ops on `kernels` (e.g. Formulas) instead of the compiled extension."""
    original = extension.cuda_kernels
    extension.cuda_kernels = lambda: kernels
    try:
        yield kernels
    finally:
        extension.cuda_kernels = original
