"""CUDA backend of minibatch_stddev (`progan_fast.ops.minibatch_stddev`), official grouping only (group_size=None
runs the reference): custom ops over the kernels of minibatch_stddev.cu.

The kernels give the per-group statistics, the backward and the backward's backward; the forward saves x (the
statistics are recomputed from it, G loads per position). The backward op is differentiable once more, which is
what the gradient penalty's double backward needs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from progan_fast.csrc import extension
from progan_fast.ops._checks import accumulation_dtype
from progan_fast.ops.minibatch_stddev import (append_group_channel, effective_group_size, minibatch_stddev_op,
                                              minibatch_stddev_reference)


@torch.library.custom_op("progan_fast::cuda_minibatch_stddev", mutates_args=())
def _minibatch_stddev_forward(x: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    return append_group_channel(x, extension.cuda_kernels().minibatch_stddev_stats(x, group_size, eps), group_size)


@torch.library.custom_op("progan_fast::cuda_minibatch_stddev_backward", mutates_args=())
def _minibatch_stddev_backward(grad_out: torch.Tensor, x: torch.Tensor, group_size: int,
                               eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_stats): grad_stats[m] is the stddev channel's gradient summed over group m and H, W."""
    channel = grad_out[:, -1]
    grad_stats = channel.sum(dim=(1, 2), dtype=accumulation_dtype(channel.dtype)).reshape(group_size, -1).sum(0)
    return extension.cuda_kernels().minibatch_stddev_backward(grad_out, x, grad_stats, group_size, eps), grad_stats


@_minibatch_stddev_forward.register_fake
def _(x, group_size, eps):
    return append_group_channel(x, x.new_empty(x.shape[0] // group_size), group_size)


@_minibatch_stddev_backward.register_fake
def _(grad_out, x, group_size, eps):
    return torch.empty_like(x), x.new_empty(x.shape[0] // group_size, dtype=accumulation_dtype(grad_out.dtype))


def _save_input(ctx, inputs, output):
    x, ctx.group_size, ctx.eps = inputs
    ctx.save_for_backward(x)


def _minibatch_stddev_forward_grad(ctx, grad_out):
    x, = ctx.saved_tensors
    return _minibatch_stddev_backward(grad_out, x, ctx.group_size, ctx.eps)[0], None, None


def _save_input_and_stats(ctx, inputs, output):
    _, x, ctx.group_size, ctx.eps = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1])


@torch.autograd.function.once_differentiable
def _minibatch_stddev_backward_grad(ctx, gg, _grad_of_stats):
    x, grad_stats = ctx.saved_tensors
    grad_x, grad_stats2 = extension.cuda_kernels().minibatch_stddev_double_backward(gg, x, grad_stats,
                                                                                    ctx.group_size, ctx.eps)
    return append_group_channel(gg, grad_stats2, ctx.group_size), grad_x, None, None


_minibatch_stddev_forward.register_autograd(_minibatch_stddev_forward_grad, setup_context=_save_input)
_minibatch_stddev_backward.register_autograd(_minibatch_stddev_backward_grad, setup_context=_save_input_and_stats)


def minibatch_stddev_cuda(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    if group_size is None or x.dtype not in extension.cuda_kernels().dtypes:
        return minibatch_stddev_reference(x, group_size, eps)
    return _minibatch_stddev_forward(x, effective_group_size(x.shape[0], group_size), float(eps))


minibatch_stddev_op.register("cuda", minibatch_stddev_cuda)
