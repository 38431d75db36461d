"""Shape facts of ProGAN shared by the reference and the fast models (docs/progan.md, "Networks")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

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
    if z.shape[0] == 0:
        raise ValueError(f"Generator needs at least one latent, got an empty batch of shape {tuple(z.shape)}")


def check_images(images: torch.Tensor, num_channels: int, widths: Widths) -> int:
    """Validate D's input and return its level."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != num_channels \
            or images.shape[2] != images.shape[3]:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Discriminator expects images of shape [N, {num_channels}, res, res], got {shape}")
    if images.shape[0] == 0:  # the minibatch stddev is a statistic of the batch
        raise ValueError(f"Discriminator needs at least one image, got an empty batch of shape {tuple(images.shape)}")
    return widths.level(images.shape[-1])


def mbstd_enabled(group_size: Optional[int]) -> bool:
    """Official: the layer exists for group_size > 1; None selects the whole-batch variant."""
    return group_size is None or group_size > 1


class GeneratorSkeleton(nn.Module):
    """Builds G's modules from the subclass's layer types: blocks[0] is the 4x4 input block, blocks[k] the
    block at 4 * 2**k, to_rgb[k] its output layer. Subclasses write forward()."""

    def __init__(self, resolution: int = 1024, num_channels: int = 3, latent_size: Optional[int] = None,
                 fmap_base: int = 8192, fmap_max: int = 512):
        super().__init__()
        self.widths = Widths(resolution, fmap_base, fmap_max)
        self.resolution, self.num_channels = resolution, num_channels
        self.latent_size = latent_size or self.widths.nf(0)
        width = self.widths.channels
        levels = range(self.widths.num_levels)
        self.blocks = nn.ModuleList([self.make_input_block(self.latent_size, width(0))] +
                                    [self.make_block(width(k - 1), width(k)) for k in levels[1:]])
        self.to_rgb = nn.ModuleList([self.make_to_rgb(width(k), num_channels) for k in levels])

    def make_input_block(self, latent_size: int, channels: int) -> nn.Module:
        raise NotImplementedError

    def make_block(self, in_channels: int, out_channels: int) -> nn.Module:
        raise NotImplementedError

    def make_to_rgb(self, channels: int, num_channels: int) -> nn.Module:
        raise NotImplementedError


class DiscriminatorSkeleton(nn.Module):
    """Builds D's modules from the subclass's layer types: from_rgb[k] and blocks[k] at 4 * 2**k, blocks[0]
    the 4x4 output block (minibatch stddev, conv, two dense layers). Subclasses write forward()."""

    def __init__(self, resolution: int = 1024, num_channels: int = 3, fmap_base: int = 8192, fmap_max: int = 512,
                 mbstd_group_size: Optional[int] = 4):
        super().__init__()
        self.widths = Widths(resolution, fmap_base, fmap_max)
        self.resolution, self.num_channels = resolution, num_channels
        width = self.widths.channels
        levels = range(self.widths.num_levels)
        self.from_rgb = nn.ModuleList([self.make_from_rgb(num_channels, width(k)) for k in levels])
        self.blocks = nn.ModuleList([self.make_output_block(width(0), self.widths.nf(0), mbstd_group_size)] +
                                    [self.make_block(width(k), width(k - 1)) for k in levels[1:]])

    def make_from_rgb(self, num_channels: int, channels: int) -> nn.Module:
        raise NotImplementedError

    def make_block(self, in_channels: int, out_channels: int) -> nn.Module:
        raise NotImplementedError

    def make_output_block(self, channels: int, hidden: int, mbstd_group_size: Optional[int]) -> nn.Module:
        raise NotImplementedError
