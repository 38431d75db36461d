"""The metrics of a generator (docs/progan.md, "Metrics"): SWD of its samples against a set of reals, and the
MS-SSIM of random pairs of its samples (with that of the reals beside it, for scale).

Tensors in, numbers out: the trainer (at the end of each resolution) and `python -m progan_fast.metrics` pass
the reals they picked and get the same numbers for the same generator, reals and seed.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..images import sample_images, to_uint8
from .ms_ssim import MIN_RESOLUTION as MS_SSIM_MIN_RESOLUTION
from .ms_ssim import pairs_ms_ssim
from .swd import swd


def generator_samples(G: torch.nn.Module, count: int, resolution: int, alpha=1.0, seed: int = 0,
                      autocast_dtype: Optional[torch.dtype] = None, device="cpu") -> torch.Tensor:
    """uint8 [count, 3, resolution, resolution] of G at (resolution, alpha) from latents drawn with `seed` (so
    every evaluation with that seed uses the same ones)."""
    latents = torch.randn(count, G.latent_size, generator=torch.Generator().manual_seed(seed + 4))
    return to_uint8(sample_images(G, latents.to(device), resolution, alpha, autocast_dtype))


def generator_swd(G: torch.nn.Module, reals: torch.Tensor, resolution: int, alpha=1.0, seed: int = 0,
                  autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """SWD x1e3 per level and mean between uint8 `reals` [N, 3, resolution, resolution] and N samples of G."""
    fakes = generator_samples(G, len(reals), resolution, alpha, seed, autocast_dtype, reals.device)
    return swd(reals, fakes, seed=seed)


def generator_metrics(G: torch.nn.Module, reals: torch.Tensor, resolution: int, alpha=1.0, seed: int = 0,
                      autocast_dtype: Optional[torch.dtype] = None,
                      progress: Callable[[str], None] = lambda text: None) -> dict:
    """{"swd_x1e3": SWD per level and mean, "ms_ssim": of pairs of the samples, "ms_ssim_reals": of pairs of the
    reals} for N = len(reals) samples of G; MS-SSIM only from 16x16 (its 5 scales). `progress` is told what
    starts."""
    progress(f"sampling {len(reals)} images")
    fakes = generator_samples(G, len(reals), resolution, alpha, seed, autocast_dtype, reals.device)
    progress("SWD")
    result = {"swd_x1e3": swd(reals, fakes, seed=seed)}
    if resolution >= MS_SSIM_MIN_RESOLUTION and len(reals) >= 2:
        progress("MS-SSIM")
        result.update(ms_ssim=pairs_ms_ssim(fakes), ms_ssim_reals=pairs_ms_ssim(reals))
    return result
