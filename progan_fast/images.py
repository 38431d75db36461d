"""Generated and real images as pictures: sampling a generator in batches, uint8 conversion, grids and PNG files.

Shared by the trainer (sample grids), the metrics (SWD samples) and `python -m progan_fast.generate`, so that all
three turn a generator's output into pixels the same way.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

SAMPLE_BATCH = 64  # latents per forward pass of a sampler: bounded memory for any number of images


@torch.no_grad()
def sample_images(G: torch.nn.Module, latents: torch.Tensor, resolution: int, alpha=1.0,
                  autocast_dtype: Optional[torch.dtype] = None, batch: int = SAMPLE_BATCH) -> torch.Tensor:
    """G(latents) at `resolution` and fade-in `alpha`: float32 images in [-1, 1], `batch` latents at a time,
    under autocast in `autocast_dtype` if one is given."""
    autocast = (torch.autocast(latents.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        return torch.cat([G(z, resolution, alpha).float() for z in latents.split(batch)])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255] (the official conversion: round, clip)."""
    return (images.float() * 127.5 + 127.5).round_().clamp_(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor, cols: int, scale: int = 1) -> np.ndarray:
    """Images in [-1, 1] [N, C, H, W] -> one uint8 HWC grid, `cols` wide, each image enlarged `scale` times."""
    pixels = to_uint8(images).cpu()
    if scale > 1:
        pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = pixels.shape
    rows = math.ceil(n / cols)
    grid = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    grid[:n] = pixels
    grid = grid.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return grid.numpy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    """uint8 HWC pixels (an image or a grid) as a PNG file."""
    from PIL import Image

    Image.fromarray(pixels).save(path)
