"""minibatch_stddev: append one feature map holding the minibatch standard deviation (docs/progan.md, Networks).

Official grouping (group_size=G): x [N,C,H,W] is viewed as [G, M, C, H, W], so sample i belongs to
group i % M; the biased variance over each group (fp32), sqrt(var + eps), averaged over C, H, W,
is one value per group, appended as a constant channel. ``group_size=None`` is the whole-batch
variant of the seeds (torch.std's unbiased estimate over the batch, eps inside the sqrt).

Reference: `minibatch_stddev_reference`. Layer: `progan_fast.MinibatchStdDev`.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating, check_rank


def group_count(batch: int, group_size: Optional[int]) -> int:
    """Effective group size for a batch, with the errors the user should see."""
    if group_size is None:
        if batch < 2:
            raise ValueError(f"minibatch_stddev over the whole batch needs a batch of at least 2, got {batch}")
        return batch
    size = min(group_size, batch)
    if batch % size != 0:
        raise ValueError(f"minibatch_stddev: batch size {batch} is not divisible by the group size {size}; "
                         f"use a batch that is a multiple of {size}, or another group_size")
    return size


def _group_deviations(x: torch.Tensor, group_size: int, eps: float):
    """(x - group mean) as [G, M, C, H, W] and sd = sqrt(biased variance + eps) as [M, C, H, W], fp32+."""
    n, c, h, w = x.shape
    grouped = x.to(accumulation_dtype(x.dtype)).reshape(group_size, n // group_size, c, h, w)
    deviations = grouped - grouped.mean(dim=0)
    return deviations, (deviations.square().mean(dim=0) + eps).sqrt()


def _append_group_channel(x: torch.Tensor, per_group: torch.Tensor, group_size: int) -> torch.Tensor:
    """x with one more channel holding per_group[n % M] for sample n."""
    n, _, h, w = x.shape
    return torch.cat([x, per_group.to(x.dtype).repeat(group_size).reshape(n, 1, 1, 1).expand(n, 1, h, w)], dim=1)


def minibatch_stddev_reference(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    n = x.shape[0]
    if group_size is None:
        std = (x.to(accumulation_dtype(x.dtype)).var(dim=0, unbiased=True) + eps).sqrt().mean().reshape(1)
        return _append_group_channel(x, std, n)
    size = group_count(n, group_size)
    return _append_group_channel(x, _group_deviations(x, size, eps)[1].mean(dim=(1, 2, 3)), size)


_op = Op("minibatch_stddev", minibatch_stddev_reference)


def minibatch_stddev(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    """[N, C, H, W] -> [N, C + 1, H, W] with the minibatch stddev as the last channel."""
    check_rank("minibatch_stddev", x, 4, "[N, C, H, W]")
    check_floating("minibatch_stddev", x)
    if group_size is not None and group_size < 1:
        raise ValueError(f"minibatch_stddev: group_size must be >= 1 or None (whole batch), got {group_size}")
    group_count(x.shape[0], group_size)
    return _op(x, group_size, eps)


# --- triton backend --------------------------------------------------------------------------------------
# Opaque custom ops, so torch.compile traces D through their fake implementations. The group size travels
# resolved (G = min(group_size, N), or N for the whole batch with `unbiased`). Saving the output keeps x
# (its first C channels) for the backward without holding the input alive. The gradient op's own backward,
# needed by the gradient penalty's double backward, recomputes the first-order gradient with the torch
# reference and differentiates it (second order only, on the small 4x4 map of D's last block).

@torch.library.custom_op("progan_fast::minibatch_stddev", mutates_args=())
def _minibatch_stddev_triton_op(x: torch.Tensor, group_size: int, unbiased: bool, eps: float) -> torch.Tensor:
    from ..kernels.minibatch_stddev import minibatch_stddev_forward
    return minibatch_stddev_forward(x, group_size, unbiased, eps)


@_minibatch_stddev_triton_op.register_fake
def _minibatch_stddev_fake(x, group_size, unbiased, eps):
    from ..kernels.minibatch_stddev import output_like
    return output_like(x)


@torch.library.custom_op("progan_fast::minibatch_stddev_grad", mutates_args=())
def _minibatch_stddev_grad_op(grad: torch.Tensor, out: torch.Tensor, group_size: int, unbiased: bool,
                              eps: float) -> torch.Tensor:
    from ..kernels.minibatch_stddev import minibatch_stddev_backward
    return minibatch_stddev_backward(grad, out, group_size, unbiased, eps)


@_minibatch_stddev_grad_op.register_fake
def _minibatch_stddev_grad_fake(grad, out, group_size, unbiased, eps):
    from ..kernels._common import empty_4d
    n, c, h, w = out.shape
    return empty_4d((n, c - 1, h, w), out)


def _save_output(ctx, inputs, output):
    ctx.group_size, ctx.unbiased, ctx.eps = inputs[-3:]
    ctx.save_for_backward(output)


def _minibatch_stddev_backward(ctx, grad):
    out, = ctx.saved_tensors
    return _minibatch_stddev_grad_op(grad, out, ctx.group_size, ctx.unbiased, ctx.eps), None, None, None


def _save_grad_and_output(ctx, inputs, output):
    ctx.group_size, ctx.unbiased, ctx.eps = inputs[-3:]
    ctx.save_for_backward(inputs[0], inputs[1])


def _minibatch_stddev_grad_backward(ctx, grad_of_dx):
    grad, out = ctx.saved_tensors
    with torch.enable_grad():
        x = out[:, :-1].detach().requires_grad_()
        grad = grad.detach().requires_grad_()
        y = minibatch_stddev_reference(x, None if ctx.unbiased else ctx.group_size, ctx.eps)
        dx, = torch.autograd.grad(y, x, grad, create_graph=True)
        d_grad, d_x = torch.autograd.grad(dx, (grad, x), grad_of_dx)
    d_out = torch.cat([d_x, torch.zeros_like(out[:, -1:])], dim=1)  # dx does not read the stddev channel
    return d_grad, d_out, None, None, None


_minibatch_stddev_triton_op.register_autograd(_minibatch_stddev_backward, setup_context=_save_output)
_minibatch_stddev_grad_op.register_autograd(_minibatch_stddev_grad_backward, setup_context=_save_grad_and_output)


def _minibatch_stddev_triton(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    return _minibatch_stddev_triton_op(x, group_count(x.shape[0], group_size), group_size is None, float(eps))


_op.register("triton", _minibatch_stddev_triton)


# --- cuda backend ------------------------------------------------------------------------------------------
# Official grouping only (group_size=None runs the reference). The kernels of csrc/minibatch_stddev.cu give
# the per-group statistics, the backward and the backward's backward; the forward saves x (the statistics
# are recomputed from it, G loads per position). The gradient Function is differentiable once more, which
# is what the gradient penalty's double backward needs. `kernels` is the extension or
# MinibatchStdDevFormulas, the same math in plain torch that the tests hold the Functions and kernels to.

class MinibatchStdDevFormulas:
    """What the minibatch-stddev kernels compute, in plain torch (K = C*H*W, d = x - group mean)."""

    @staticmethod
    def minibatch_stddev_stats(x, group_size, eps):
        return _group_deviations(x, group_size, eps)[1].mean(dim=(1, 2, 3))

    @staticmethod
    def minibatch_stddev_backward(grad_out, x, grad_stats, group_size, eps):
        """grad_out[:, :C] + grad_stats[m] * d / (K G sd)."""
        deviations, sd = _group_deviations(x, group_size, eps)
        scale = grad_stats.reshape(1, -1, 1, 1, 1) / (sd[0].numel() * group_size)
        return (grad_out[:, :-1] + (scale * deviations / sd).reshape(x.shape)).to(x.dtype)

    @staticmethod
    def minibatch_stddev_double_backward(gg, x, grad_stats, group_size, eps):
        """With u = gg grad_stats[m] / (K G): (u - mean_g u) / sd - sum_g(u d) d / (G sd^3), and per group
        sum over g, c, h, w of gg d / (K G sd)."""
        deviations, sd = _group_deviations(x, group_size, eps)
        gg = gg.to(deviations.dtype).reshape(deviations.shape)
        per_group = sd[0].numel() * group_size
        u = gg * grad_stats.reshape(1, -1, 1, 1, 1) / per_group
        grad_x = (u - u.mean(dim=0)) / sd - (u * deviations).sum(dim=0) * deviations / (group_size * sd ** 3)
        grad_stats2 = (gg * deviations / sd).sum(dim=(0, 2, 3, 4)) / per_group
        return grad_x.reshape(x.shape).to(x.dtype), grad_stats2


class _MinibatchStdDevGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out, x, group_size, eps, kernels):
        # gradient of each group's statistic: the stddev channel summed over its samples and H, W
        channel = grad_out[:, -1]
        grad_stats = channel.sum(dim=(1, 2), dtype=accumulation_dtype(channel.dtype)).reshape(group_size, -1).sum(0)
        ctx.group_size, ctx.eps, ctx.kernels = group_size, eps, kernels
        ctx.save_for_backward(x, grad_stats)
        return kernels.minibatch_stddev_backward(grad_out, x, grad_stats, group_size, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gg):
        x, grad_stats = ctx.saved_tensors
        grad_x, grad_stats2 = ctx.kernels.minibatch_stddev_double_backward(gg, x, grad_stats, ctx.group_size, ctx.eps)
        return _append_group_channel(gg, grad_stats2, ctx.group_size), grad_x, None, None, None


class _MinibatchStdDevCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group_size, eps, kernels):
        ctx.group_size, ctx.eps, ctx.kernels = group_size, eps, kernels
        ctx.save_for_backward(x)
        return _append_group_channel(x, kernels.minibatch_stddev_stats(x, group_size, eps), group_size)

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        return _MinibatchStdDevGrad.apply(grad_out, x, ctx.group_size, ctx.eps, ctx.kernels), None, None, None


def minibatch_stddev_cuda(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8,
                          kernels=None) -> torch.Tensor:
    """The cuda backend; kernels: the extension's by default, MinibatchStdDevFormulas for plain torch."""
    from ..backend import KERNEL_DTYPES
    from ..cuda_extension import cuda_kernels
    if group_size is None or (kernels is None and x.dtype not in KERNEL_DTYPES):
        return minibatch_stddev_reference(x, group_size, eps)
    return _MinibatchStdDevCuda.apply(x, group_count(x.shape[0], group_size), float(eps), kernels or cuda_kernels())


_op.register("cuda", minibatch_stddev_cuda)
