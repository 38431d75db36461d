"""minibatch_stddev: append one feature map holding the minibatch standard deviation (docs/progan.md, Networks).

Official grouping (group_size=G): x [N,C,H,W] is viewed as [G, M, C, H, W], so sample i belongs to
group i % M; the biased variance over each group (fp32), sqrt(var + eps), averaged over C, H, W,
is one value per group, appended as a constant channel. ``group_size=None`` is the whole-batch
variant of some PyTorch ports (torch.std's unbiased estimate over the batch, eps inside the sqrt).

Layer: `progan_fast.MinibatchStdDev`. Backends: `progan_fast.kernels.minibatch_stddev` (triton),
`progan_fast.csrc.minibatch_stddev` (cuda, official grouping only).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..backend import Op
from ._checks import accumulation_dtype, check_floating, check_rank


def effective_group_size(batch: int, group_size: Optional[int]) -> int:
    """The group size a batch is split into (min(group_size, batch), or the batch for None), with the errors the
    user should see."""
    if batch < 1:
        raise ValueError("minibatch_stddev needs at least one sample (a statistic over the batch), got an empty "
                         "batch")
    if group_size is None:
        if batch < 2:
            raise ValueError(f"minibatch_stddev over the whole batch needs a batch of at least 2, got {batch}")
        return batch
    size = min(group_size, batch)
    if batch % size != 0:
        raise ValueError(f"minibatch_stddev: batch size {batch} is not divisible by the group size {size}; "
                         f"use a batch that is a multiple of {size}, or another group_size")
    return size


def group_deviations(x: torch.Tensor, group_size: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x - group mean) as [G, M, C, H, W] and sd = sqrt(biased variance + eps) as [M, C, H, W], fp32+."""
    n, c, h, w = x.shape
    grouped = x.to(accumulation_dtype(x.dtype)).reshape(group_size, n // group_size, c, h, w)
    deviations = grouped - grouped.mean(dim=0)
    return deviations, (deviations.square().mean(dim=0) + eps).sqrt()


def append_group_channel(x: torch.Tensor, per_group: torch.Tensor, group_size: int) -> torch.Tensor:
    """x with one more channel holding per_group[n % M] for sample n."""
    n, _, h, w = x.shape
    return torch.cat([x, per_group.to(x.dtype).repeat(group_size).reshape(n, 1, 1, 1).expand(n, 1, h, w)], dim=1)


def minibatch_stddev_reference(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    n = x.shape[0]
    if group_size is None:
        std = (x.to(accumulation_dtype(x.dtype)).var(dim=0, unbiased=True) + eps).sqrt().mean().reshape(1)
        return append_group_channel(x, std, n)
    size = effective_group_size(n, group_size)
    return append_group_channel(x, group_deviations(x, size, eps)[1].mean(dim=(1, 2, 3)), size)


minibatch_stddev_op = Op("minibatch_stddev", minibatch_stddev_reference)


def minibatch_stddev(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    """[N, C, H, W] -> [N, C + 1, H, W] with the minibatch stddev as the last channel."""
    check_rank("minibatch_stddev", x, 4, "[N, C, H, W]")
    check_floating("minibatch_stddev", x)
    if group_size is not None and group_size < 1:
        raise ValueError(f"minibatch_stddev: group_size must be >= 1 or None (whole batch), got {group_size}")
    effective_group_size(x.shape[0], group_size)
    return minibatch_stddev_op(x, group_size, eps)
