"""SWD of a generator: its samples against a set of reals (docs/progan.md, "Metrics").

Tensors in, numbers out: the trainer (at the end of each resolution) and `python -m progan_fast.metrics` pass
the reals they picked and get the same numbers for the same generator, reals and seed.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..images import sample_images, to_uint8
from .swd import swd


def generator_swd(G: torch.nn.Module, reals: torch.Tensor, resolution: int, alpha=1.0, seed: int = 0,
                  autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """SWD x1e3 per level and mean between uint8 `reals` [N, 3, resolution, resolution] and N images of G at
    (resolution, alpha) from latents drawn with `seed` (so every evaluation with that seed uses the same ones)."""
    latents = torch.randn(len(reals), G.latent_size, generator=torch.Generator().manual_seed(seed + 4))
    fakes = sample_images(G, latents.to(reals.device), resolution, alpha, autocast_dtype)
    return swd(reals, to_uint8(fakes), seed=seed)
