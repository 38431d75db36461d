"""minibatch_stddev: append one feature map holding the minibatch standard deviation (SPEC).

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


def minibatch_stddev_reference(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    n, c, h, w = x.shape
    stats = x.to(accumulation_dtype(x.dtype))
    if group_size is None:
        std = (stats.var(dim=0, unbiased=True) + eps).sqrt().mean().reshape(1).expand(n)
    else:
        size = group_count(n, group_size)
        grouped = stats.reshape(size, n // size, c, h, w)
        var = (grouped - grouped.mean(dim=0, keepdim=True)).square().mean(dim=0)
        std = (var + eps).sqrt().mean(dim=(1, 2, 3)).repeat(size)
    feature = std.to(x.dtype).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, feature], dim=1)


_op = Op("minibatch_stddev", minibatch_stddev_reference)


def minibatch_stddev(x: torch.Tensor, group_size: Optional[int] = 4, eps: float = 1e-8) -> torch.Tensor:
    """[N, C, H, W] -> [N, C + 1, H, W] with the minibatch stddev as the last channel."""
    check_rank("minibatch_stddev", x, 4, "[N, C, H, W]")
    check_floating("minibatch_stddev", x)
    if group_size is not None and group_size < 1:
        raise ValueError(f"minibatch_stddev: group_size must be >= 1 or None (whole batch), got {group_size}")
    group_count(x.shape[0], group_size)
    return _op(x, group_size, eps)
