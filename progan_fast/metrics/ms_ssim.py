"""MS-SSIM (Wang et al. 2003) between pairs of images: the ProGAN paper's measure of variation, as its official
code computes it (tkarras/progressive_growing_of_gans, metrics/ms_ssim.py) over random pairs of generated images.

Per pair, at 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333): the SSIM terms (pixels 0..255, k1
0.01, k2 0.03) under a Gaussian window of 11x11 pixels, sigma 1.5, at the 'valid' positions only (window and sigma
shrink in proportion where an image is smaller than 11 pixels), averaged over positions and colour channels; then
a 2x2 box downsample. The contrast-structure terms of the first 4 scales and the SSIM of the last, clipped at 0,
are raised to their weights and multiplied; the products are averaged over the pairs. Identical images give 1,
unrelated ones values near 0: a set of images whose pairs score lower is more varied. 5 scales need images of at
least 16x16.

Written here rather than taken from a library: torchmetrics and pytorch-msssim keep the 11x11 window at every scale,
so they refuse images under 161 pixels a side at 5 scales (every image of the quick preset), and pytorch-msssim
averages the colour channels after the product instead of before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the paper's and the official code's (they sum to 1.0001)
FILTER_SIZE, FILTER_SIGMA = 11, 1.5
K1, K2, MAX_VALUE = 0.01, 0.03, 255.0
MIN_RESOLUTION = 2 ** (len(WEIGHTS) - 1)
CHUNK_PIXELS = 2 ** 22  # pixels of one image set per pass: bounded memory for any number of pairs


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """[size, size] float32 summing to 1, centred on the middle pixel (between the middle two for even sizes)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2 + (0.5 if size % 2 == 0 else 0.0)
    line = torch.exp(-coords.square() / (2 * sigma ** 2))
    window = torch.outer(line, line)
    return (window / window.sum()).float()


def ssim_terms(a: torch.Tensor, b: torch.Tensor):
    """(SSIM, contrast-structure) per pair, averaged over positions and channels, of float32 [N, C, H, W] (as the
    official code; its rounding is far below the constants c1 and c2)."""
    n, c, h, w = a.shape
    size = min(FILTER_SIZE, h, w)
    window = gaussian_window(size, size * FILTER_SIGMA / FILTER_SIZE).to(a.device)[None, None]

    def blur(x):
        return F.conv2d(x.reshape(n * c, 1, h, w), window).reshape(n, c, h - size + 1, w - size + 1)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a.square(), blur(b * b) - mu_b.square()
    covariance = blur(a * b) - mu_a * mu_b
    c1, c2 = (K1 * MAX_VALUE) ** 2, (K2 * MAX_VALUE) ** 2
    contrast_structure = (2 * covariance + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a.square() + mu_b.square() + c1)
    return (luminance * contrast_structure).mean(dim=(1, 2, 3)), contrast_structure.mean(dim=(1, 2, 3))


def ms_ssim_per_pair(images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair (images_a[i], images_b[i]): uint8 (or 0..255 float) [N, C, H, W], H and W >= 16."""
    if images_a.shape != images_b.shape or images_a.dim() != 4 or len(images_a) == 0:
        raise ValueError(f"ms_ssim expects two non-empty image sets [N, C, H, W] of the same shape, got "
                         f"{tuple(images_a.shape)} and {tuple(images_b.shape)}")
    if min(images_a.shape[-2:]) < MIN_RESOLUTION:
        raise ValueError(f"MS-SSIM at {len(WEIGHTS)} scales needs images of at least {MIN_RESOLUTION}x"
                         f"{MIN_RESOLUTION}, got {images_a.shape[-2]}x{images_a.shape[-1]}")
    chunk = max(1, CHUNK_PIXELS // images_a[0].numel())
    return torch.cat([_ms_ssim(a.float(), b.float()) for a, b in zip(images_a.split(chunk), images_b.split(chunk))])


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    score = torch.ones(len(a), device=a.device)
    for weight in WEIGHTS[:-1]:
        score *= ssim_terms(a, b)[1].clamp(min=0) ** weight
        a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return score * ssim_terms(a, b)[0].clamp(min=0) ** WEIGHTS[-1]


def ms_ssim(images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """Mean MS-SSIM over the pairs (images_a[i], images_b[i])."""
    return ms_ssim_per_pair(images_a, images_b).mean().item()


def pairs_ms_ssim(images: torch.Tensor) -> float:
    """Mean MS-SSIM of the pairs (0, 1), (2, 3), ... of a set drawn at random (an odd last image is left out),
    as the official metric pairs consecutive generated images."""
    pairs = len(images) // 2
    if pairs < 1:
        raise ValueError(f"MS-SSIM over pairs needs at least 2 images, got {len(images)}")
    return ms_ssim(images[0:2 * pairs:2], images[1:2 * pairs:2])
