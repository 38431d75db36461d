"""Memory layouts of 4-D activations [N, C, H, W]: contiguous (NCHW) or channels_last (NHWC), and the one
variant of channels_last that the triton backend makes itself: the first C channels of a wider channels_last
buffer, whose pixels start at a multiple of 16 elements. Triton specialises integer arguments divisible by 16,
so a conv reading such a tensor knows its pixel addresses are 16-byte aligned and loads 16-byte vectors; with
minibatch stddev's 513 channels (512 + 1) every load of D's last conv would otherwise be a scalar one.
"""
from __future__ import annotations

import torch

PIXEL_ALIGNMENT = 16  # elements: the divisibility that Triton specialises integer arguments (strides) on


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether the channels are x's innermost dim: channels_last (and not contiguous as well, as with one
    channel or a 1x1 map), or the first C channels of a wider channels_last buffer."""
    if x.dim() != 4:
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return not x.is_contiguous()
    n, c, h, w = x.shape
    return (c > 1 and x.stride(1) == 1 and x.stride(3) >= c and x.stride(2) == x.stride(3) * w
            and x.stride(0) == x.stride(2) * h)


def in_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """x laid out in `memory_format` (contiguous or channels_last): x itself if it is already (a padded
    channels_last view counts as channels_last), else a copy."""
    if memory_format == torch.channels_last and is_channels_last(x):
        return x
    return x.contiguous(memory_format=memory_format)


def empty_channels_last(shape, dtype: torch.dtype, device: torch.device, aligned_pixels: bool = False
                        ) -> torch.Tensor:
    """A new channels_last [N, C, H, W] tensor. aligned_pixels: each pixel's channels start at a multiple of
    PIXEL_ALIGNMENT elements (a view of a buffer with the channel count rounded up; the padding is never read)."""
    n, c, h, w = shape
    padded = -(-c // PIXEL_ALIGNMENT) * PIXEL_ALIGNMENT if aligned_pixels else c
    buffer = torch.empty((n, padded, h, w), dtype=dtype, device=device, memory_format=torch.channels_last)
    return buffer if padded == c else buffer[:, :c]


def empty_4d(shape, like_tensor: torch.Tensor, dtype: torch.dtype = None, aligned_pixels: bool = False
             ) -> torch.Tensor:
    """A new [N, C, H, W] tensor in the memory format of `like_tensor` (channels_last, as `empty_channels_last`,
    or contiguous), in its dtype unless `dtype` is given."""
    dtype = dtype or like_tensor.dtype
    if is_channels_last(like_tensor):
        return empty_channels_last(shape, dtype, like_tensor.device, aligned_pixels)
    return torch.empty(shape, dtype=dtype, device=like_tensor.device)
