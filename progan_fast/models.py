"""The fast ProGAN: same constructor, forward signature and state_dict keys as `progan_fast.reference`,
built from the drop-in layers so every op runs on the selected backend (fused where a kernel exists)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import functional as F
from .architecture import Widths, check_images, check_latents, fading, mbstd_enabled
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev
from .ops._checks import Alpha, check_alpha

SQRT2 = math.sqrt(2.0)


class GeneratorInput(nn.Module):
    def __init__(self, latent_size: int, channels: int):
        super().__init__()
        self.dense = EqualizedLinear(latent_size, channels * 16, bias=False, gain=SQRT2 / 4)
        self.bias = nn.Parameter(torch.zeros(channels))  # one per feature map, as in the official code
        self.conv = EqualizedConv2d(channels, channels, 3, activation="lrelu", pixel_norm=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(F.pixel_norm(z)).reshape(z.shape[0], -1, 4, 4)
        return self.conv(F.pixel_norm(F.bias_act(x, self.bias, "lrelu")))


class GeneratorBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", pixel_norm=True, upsample=True)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, activation="lrelu", pixel_norm=True)


class Generator(nn.Module):
    """G(z, res, alpha=1.0) -> images [N, num_channels, res, res]. alpha: float in [0, 1] or 0-dim tensor."""

    def __init__(self, resolution: int = 1024, num_channels: int = 3, latent_size: Optional[int] = None,
                 fmap_base: int = 8192, fmap_max: int = 512):
        super().__init__()
        self.widths = Widths(resolution, fmap_base, fmap_max)
        self.resolution, self.num_channels = resolution, num_channels
        self.latent_size = latent_size or self.widths.nf(0)
        nf = self.widths.channels
        levels = range(self.widths.num_levels)
        self.blocks = nn.ModuleList([GeneratorInput(self.latent_size, nf(0))] +
                                    [GeneratorBlock(nf(k - 1), nf(k)) for k in levels[1:]])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(nf(k), num_channels, 1, gain=1.0) for k in levels])

    def forward(self, z: torch.Tensor, res: int, alpha: Alpha = 1.0) -> torch.Tensor:
        check_latents(z, self.latent_size)
        level, alpha = self.widths.level(res), check_alpha(alpha)
        features = [self.blocks[0](z)]
        for block in self.blocks[1:level + 1]:
            features.append(block(features[-1]))
        images = self.to_rgb[level](features[-1])
        if level > 0 and fading(alpha):
            images = F.fade_upsample(images, self.to_rgb[level - 1](features[-2]), alpha)
        return images


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.downsample2x(self.conv1(self.conv0(x)))


class DiscriminatorOutput(nn.Module):
    def __init__(self, channels: int, hidden: int, mbstd_group_size: Optional[int]):
        super().__init__()
        enabled = mbstd_enabled(mbstd_group_size)
        self.mbstd = MinibatchStdDev(mbstd_group_size) if enabled else nn.Identity()
        self.conv = EqualizedConv2d(channels + int(enabled), channels, 3, activation="lrelu")
        self.dense0 = EqualizedLinear(channels * 16, hidden, activation="lrelu")
        self.dense1 = EqualizedLinear(hidden, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense1(self.dense0(self.conv(self.mbstd(x)).flatten(1)))


class Discriminator(nn.Module):
    """D(images, alpha=1.0) -> scores [N, 1]; the resolution is read from the images."""

    def __init__(self, resolution: int = 1024, num_channels: int = 3, fmap_base: int = 8192, fmap_max: int = 512,
                 mbstd_group_size: Optional[int] = 4):
        super().__init__()
        self.widths = Widths(resolution, fmap_base, fmap_max)
        self.resolution, self.num_channels = resolution, num_channels
        nf = self.widths.channels
        levels = range(self.widths.num_levels)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(num_channels, nf(k), 1, activation="lrelu") for k in levels])
        self.blocks = nn.ModuleList([DiscriminatorOutput(nf(0), self.widths.nf(0), mbstd_group_size)] +
                                    [DiscriminatorBlock(nf(k), nf(k - 1)) for k in levels[1:]])

    def forward(self, images: torch.Tensor, alpha: Alpha = 1.0) -> torch.Tensor:
        level, alpha = check_images(images, self.num_channels, self.widths), check_alpha(alpha)
        x = self.from_rgb[level](images)
        if level > 0:
            x = self.blocks[level](x)
            if fading(alpha):
                x = F.fade(x, self.from_rgb[level - 1](F.downsample2x(images)), alpha)
        for k in range(level - 1, 0, -1):
            x = self.blocks[k](x)
        return self.blocks[0](x)
