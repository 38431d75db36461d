"""Helpers shared by the Triton backend's ops: the dtype check, memory layout, launch sizes and the fade
coefficient alpha.

Layout policy: the elementwise kernels walk memory linearly, so they take any dense tensor (NCHW,
channels_last or another permutation of the dims) as it is, and copy only non-dense inputs (slices with
gaps); the 4-D kernels address every tensor through its strides and walk the pixels in the memory order of
their output (channels_last in, channels_last out; `progan_fast.layout`). Math is fp32; outputs keep the input
dtype. The public functions of `progan_fast.ops` have checked devices and shapes already.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from progan_fast.backend import KERNEL_DTYPES

BLOCK = 1024  # elements per program of the elementwise kernels
TILE_ELEMENTS = 4096  # elements per program of the 2-D (reduction) tiles


def check_kernel_dtypes(op: str, *tensors: Optional[torch.Tensor]) -> None:
    """Every tensor (None entries, an absent bias, are skipped) in one of the dtypes the kernels store."""
    for t in tensors:
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{op} (triton backend) supports float32, float16 and bfloat16 tensors, got {t.dtype}; "
                            "convert the input, or use the torch backend")


def check_same_dtype(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{op} (triton backend) needs both inputs in one dtype, got {a.dtype} and {b.dtype}; "
                        "convert one of them with .to(other.dtype)")


def is_dense(x: torch.Tensor) -> bool:
    """Whether the elements fill their memory without gaps or overlaps, in any dim order."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(x.shape, x.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is dense (any dim order), else a contiguous copy."""
    return x if is_dense(x) else x.contiguous()


def like(t: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """t laid out with the strides of the dense tensor `layout` (a copy only when they differ), so that two
    operands of an elementwise kernel share one linear index."""
    if t.stride() == layout.stride():
        return t
    return torch.empty_like(layout, dtype=t.dtype).copy_(t)


def elementwise_operands(layout_tensor: torch.Tensor, other: torch.Tensor):
    """(layout_tensor made dense, other in its layout, an empty output in its layout) for a two-operand
    elementwise kernel that walks memory linearly."""
    layout_tensor = dense(layout_tensor)
    return layout_tensor, like(other, layout_tensor), torch.empty_like(layout_tensor)


def elementwise_grid(numel: int) -> Tuple[int]:
    return (triton.cdiv(numel, BLOCK),)


def tile_shape(rows: int) -> Tuple[int, int]:
    """(BLOCK_ROWS, BLOCK_COLS) of a 2-D tile whose rows are reduced together (all rows in one tile)."""
    block_rows = triton.next_power_of_2(max(rows, 1))
    return block_rows, max(16, TILE_ELEMENTS // block_rows)


def split_alpha(op: str, alpha: Union[float, torch.Tensor], device: torch.device
                ) -> Tuple[Optional[torch.Tensor], float]:
    """(alpha_tensor, alpha_value) for the custom ops: a tensor alpha stays on the device and is read by the
    kernel (no host synchronisation, so a captured CUDA graph replays with the current value). A tensor on
    another device (a CPU scalar with CUDA images) is copied over at each call: create it on the device."""
    if not isinstance(alpha, torch.Tensor):
        return None, float(alpha)
    if alpha.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op} (triton backend) does not compute a gradient for alpha; pass alpha.detach(), "
                         "or use the torch backend to differentiate with respect to alpha")
    return alpha.detach().to(device), 0.0


def alpha_kwargs(alpha_tensor: Optional[torch.Tensor], alpha_value: float, placeholder: torch.Tensor) -> dict:
    """Launch arguments of `load_alpha`; the placeholder pointer is never read (ALPHA_FROM_PTR is False)."""
    return dict(alpha_ptr=placeholder if alpha_tensor is None else alpha_tensor, alpha_value=alpha_value,
                ALPHA_FROM_PTR=alpha_tensor is not None)


@triton.jit
def load_alpha(alpha_ptr, alpha_value, ALPHA_FROM_PTR: tl.constexpr):
    alpha = alpha_value
    if ALPHA_FROM_PTR:
        alpha = tl.load(alpha_ptr).to(tl.float32)
    return alpha


@triton.jit
def nchw_index(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of linear index offs, walked in channels_last (c fastest) or NCHW (w fastest) order."""
    if CHANNELS_LAST:
        c = offs % C
        pixel = offs // C
    else:
        pixel = offs % (H * W) + (offs // (C * H * W)) * (H * W)
        c = (offs // (H * W)) % C
    w = pixel % W
    h = (pixel // W) % H
    n = pixel // (H * W)
    return n, c, h, w


@triton.jit
def block_of(count, BLOCK: tl.constexpr):
    """This program's BLOCK linear indices and the mask of those below count."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < count
