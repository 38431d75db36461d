"""Sliced Wasserstein distance (SWD) between two image sets, as in the ProGAN paper and its official code.

Per image: a Laplacian pyramid from full resolution down to 16x16 (5x5 binomial filter, mirrored borders, as
cv2.pyrDown/pyrUp); at every level, 128 random 7x7 patches. Per level and per set, the patch descriptors are
normalised per colour channel (mean and standard deviation over all patches), then compared with 4 repeats of
128 random unit directions: project, sort, mean absolute difference. Reported x1e3 per level, and averaged.
Images smaller than 16x16 use one level at their own size. Both sets take their patches at the same random
positions (the official code draws them independently; the expectation is the same, and identical sets give 0).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _filter(x: torch.Tensor, gain: float) -> torch.Tensor:
    kernel = torch.outer(BINOMIAL_5, BINOMIAL_5).to(x) * (gain / 256.0)
    channels = x.shape[1]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel.expand(channels, 1, 5, 5), groups=channels)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every second pixel (cv2.pyrDown)."""
    return _filter(x, 1.0)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with 4x the filter (cv2.pyrUp)."""
    n, c, h, w = x.shape
    spread = x.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = x
    return _filter(spread, 4.0)


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> List[torch.Tensor]:
    """Band-pass levels from full resolution down; the last level is the low-pass image."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def pyramid_resolutions(resolution: int, min_resolution: int = 16) -> List[int]:
    resolutions = []
    while resolution >= min_resolution:
        resolutions.append(resolution)
        resolution //= 2
    return resolutions or [resolution]


def random_patches(level: torch.Tensor, patches_per_image: int, patch_size: int,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """[N * patches_per_image, C, patch, patch] patches at uniformly random positions inside each image."""
    n, c, h, w = level.shape
    half = patch_size // 2
    if h < patch_size or w < patch_size:
        raise ValueError(f"SWD needs images of at least {patch_size}x{patch_size} for {patch_size}x{patch_size} "
                         f"patches, got {h}x{w}")
    count = n * patches_per_image
    image = torch.arange(n, device=level.device).repeat_interleave(patches_per_image)
    y = torch.randint(half, h - half, (count,), generator=generator, device="cpu").to(level.device)
    x = torch.randint(half, w - half, (count,), generator=generator, device="cpu").to(level.device)
    offsets = torch.arange(-half, half + 1, device=level.device)
    rows = (y[:, None] + offsets)[:, None, :, None]
    cols = (x[:, None] + offsets)[:, None, None, :]
    chans = torch.arange(c, device=level.device)[None, :, None, None]
    return level[image[:, None, None, None], chans, rows, cols]


def normalize_descriptors(descriptors: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (biased) std per channel over all patches and pixels; flattened to [patches, C*p*p]."""
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return ((descriptors - mean) / std).flatten(1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, repeats: int = 4, directions: int = 128,
                       generator: Optional[torch.Generator] = None) -> float:
    """Mean over repeats of the mean |sorted(a @ d) - sorted(b @ d)| over random unit directions d."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein expects two [count, dim] descriptor sets of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    results = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator, device="cpu").to(a)
        dirs = dirs / dirs.square().sum(dim=0, keepdim=True).sqrt()
        proj_a = torch.sort(a @ dirs, dim=0).values
        proj_b = torch.sort(b @ dirs, dim=0).values
        results.append((proj_a - proj_b).abs().mean())
    return torch.stack(results).mean().item()


def level_descriptors(images: torch.Tensor, resolutions: List[int], patches_per_image: int, patch_size: int,
                      generator: Optional[torch.Generator], chunk_pixels: int = 2 ** 24) -> List[torch.Tensor]:
    """Normalised descriptors per pyramid level for uint8 (or 0..255 float) images [N, C, H, W]."""
    n, c, h, w = images.shape
    chunk = max(1, chunk_pixels // (c * h * w))
    per_level: List[List[torch.Tensor]] = [[] for _ in resolutions]
    for begin in range(0, n, chunk):
        pyramid = laplacian_pyramid(images[begin:begin + chunk], len(resolutions))
        for found, level in zip(per_level, pyramid):
            found.append(random_patches(level, patches_per_image, patch_size, generator))
    return [normalize_descriptors(torch.cat(found)) for found in per_level]


def swd(images_a: torch.Tensor, images_b: torch.Tensor, patches_per_image: int = 128, patch_size: int = 7,
        repeats: int = 4, directions: int = 128, min_resolution: int = 16, seed: int = 0) -> Dict[str, float]:
    """SWD x1e3 per pyramid level (keys '128', '64', ...) and their average ('mean').

    images_*: uint8 (or float 0..255) [N, C, H, W], the same N and shape for both sets.
    """
    if images_a.shape != images_b.shape or images_a.dim() != 4:
        raise ValueError(f"swd expects two image sets [N, C, H, W] of the same shape, got {tuple(images_a.shape)} "
                         f"and {tuple(images_b.shape)}")
    resolutions = pyramid_resolutions(images_a.shape[-1], min_resolution)
    # Both sets use the same patch positions (uniform either way): identical sets then give exactly 0.
    desc_a, desc_b = (level_descriptors(images, resolutions, patches_per_image, patch_size,
                                        torch.Generator().manual_seed(seed)) for images in (images_a, images_b))
    directions_rng = torch.Generator().manual_seed(seed + 1)
    result = {str(res): sliced_wasserstein(a, b, repeats, directions, directions_rng) * 1e3
              for res, a, b in zip(resolutions, desc_a, desc_b)}
    result["mean"] = sum(result.values()) / len(resolutions)
    return result

