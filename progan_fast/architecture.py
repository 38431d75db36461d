"""Shape facts of ProGAN shared by the reference and the fast models (SPEC: "Networks")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .ops._checks import Alpha


def _is_power_of_two(value: int) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class Widths:
    """Channel widths per level; level k works at resolution 4 * 2**k."""

    resolution: int = 1024
    fmap_base: int = 8192
    fmap_max: int = 512

    def __post_init__(self):
        if not _is_power_of_two(self.resolution) or self.resolution < 4:
            raise ValueError(f"resolution must be a power of two >= 4 (4, 8, ..., 1024), got {self.resolution!r}")
        if self.fmap_base < 1 or self.fmap_max < 1:
            raise ValueError(f"fmap_base and fmap_max must be positive, got {self.fmap_base} and {self.fmap_max}")
        if self.nf(self.num_levels) < 1:
            raise ValueError(f"fmap_base={self.fmap_base} leaves no channels at resolution {self.resolution}; "
                             f"use fmap_base >= {2 ** self.num_levels}")

    @property
    def num_levels(self) -> int:
        """Resolutions 4 .. resolution."""
        return int(math.log2(self.resolution)) - 1

    def nf(self, stage: int) -> int:
        """Official nf(stage) = min(fmap_base / 2**stage, fmap_max), stage = log2(res) - 1."""
        return min(int(self.fmap_base / 2.0 ** stage), self.fmap_max)

    def channels(self, level: int) -> int:
        """Feature maps at level k (resolution 4 * 2**k)."""
        return self.nf(level + 1)

    def level(self, res: int) -> int:
        if not _is_power_of_two(res) or not 4 <= res <= self.resolution:
            raise ValueError(f"res must be a power of two from 4 to {self.resolution} (the model's resolution), "
                             f"got {res!r}")
        return int(math.log2(res)) - 2


def fading(alpha: Alpha) -> bool:
    """Whether the old branch is needed: always for a tensor alpha (no host read), else for alpha < 1."""
    return isinstance(alpha, torch.Tensor) or alpha < 1.0


def check_latents(z: torch.Tensor, latent_size: int) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != latent_size:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"Generator expects latents of shape [N, {latent_size}], got {shape}")


def check_images(images: torch.Tensor, num_channels: int, widths: Widths) -> int:
    """Validate D's input and return its level."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != num_channels \
            or images.shape[2] != images.shape[3]:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Discriminator expects images of shape [N, {num_channels}, res, res], got {shape}")
    return widths.level(images.shape[-1])


def mbstd_enabled(group_size: Optional[int]) -> bool:
    """Official: the layer exists for group_size > 1; None selects the whole-batch variant."""
    return group_size is None or group_size > 1
