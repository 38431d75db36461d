"""The plain-PyTorch reference ProGAN: the oracle every fast path is tested against.

Written op by op from docs/progan.md (the official TensorFlow networks.py, unfused path) with plain torch
calls and the reference formulas of `progan_fast.ops`; nothing here dispatches to a backend.
Parameter names match `progan_fast.Generator` / `progan_fast.Discriminator`, so state_dicts load
both ways.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import (DiscriminatorSkeleton, GeneratorSkeleton, check_images, check_latents, fading,
                           mbstd_enabled)
from .ops._checks import Alpha, check_alpha
from .ops.minibatch_stddev import minibatch_stddev_reference
from .ops.pixel_norm import pixel_norm_reference

SQRT2 = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def fade(new: torch.Tensor, old: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """The level-of-detail blend, written out: alpha 1 is the new branch only."""
    return old + (new - old) * alpha


class Conv(nn.Module):
    """Equalized-LR conv, stride 1, 'same' padding: weight ~ N(0, 1) * gain / sqrt(fan_in), unscaled bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class Dense(nn.Module):
    """Equalized-LR dense layer."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GeneratorInput(nn.Module):
    """4x4: PN(latent) -> dense to nf x 4 x 4 (gain sqrt(2)/4) -> bias per channel -> act -> PN -> conv3x3 -> act
    -> PN."""

    def __init__(self, latent_size: int, channels: int):
        super().__init__()
        self.dense = Dense(latent_size, channels * 16, gain=SQRT2 / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv = Conv(channels, channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(pixel_norm_reference(z)).reshape(z.shape[0], -1, 4, 4)
        x = pixel_norm_reference(lrelu(x + self.bias.reshape(1, -1, 1, 1)))
        return pixel_norm_reference(lrelu(self.conv(x)))


class GeneratorBlock(nn.Module):
    """res >= 8: upsample x2 (nearest) -> conv3x3 -> act -> PN -> conv3x3 -> act -> PN."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv(in_channels, out_channels, 3)
        self.conv1 = Conv(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = pixel_norm_reference(lrelu(self.conv0(x)))
        return pixel_norm_reference(lrelu(self.conv1(x)))


class Generator(GeneratorSkeleton):
    """G(z, res, alpha): images [N, num_channels, res, res]; alpha fades in the newest block (1 = stable)."""

    make_input_block, make_block = GeneratorInput, GeneratorBlock

    def make_to_rgb(self, channels: int, num_channels: int) -> nn.Module:
        return Conv(channels, num_channels, 1, gain=1.0)

    def forward(self, z: torch.Tensor, res: int, alpha: Alpha = 1.0) -> torch.Tensor:
        check_latents(z, self.latent_size)
        level, alpha = self.widths.level(res), check_alpha(alpha)
        x = self.blocks[0](z)
        for k in range(1, level + 1):
            previous, x = x, self.blocks[k](x)
        images = self.to_rgb[level](x)
        if level > 0 and fading(alpha):
            old = F.interpolate(self.to_rgb[level - 1](previous), scale_factor=2.0, mode="nearest")
            images = fade(images, old, alpha)
        return images


class DiscriminatorBlock(nn.Module):
    """res >= 8: conv3x3 -> act -> conv3x3 (to the next level's width) -> act -> avgpool 2x2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv(in_channels, in_channels, 3)
        self.conv1 = Conv(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)


class DiscriminatorOutput(nn.Module):
    """4x4: minibatch stddev -> conv3x3 -> act -> dense (nf*16 -> nf(0)) -> act -> dense (-> 1, gain 1)."""

    def __init__(self, channels: int, hidden: int, mbstd_group_size: Optional[int]):
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        extra = 1 if mbstd_enabled(mbstd_group_size) else 0
        self.conv = Conv(channels + extra, channels, 3)
        self.dense0 = Dense(channels * 16, hidden)
        self.dense1 = Dense(hidden, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if mbstd_enabled(self.mbstd_group_size):
            x = minibatch_stddev_reference(x, self.mbstd_group_size)
        x = lrelu(self.conv(x))
        return self.dense1(lrelu(self.dense0(x.flatten(1))))


class Discriminator(DiscriminatorSkeleton):
    """D(images, alpha): scores [N, 1]; res is read from the images."""

    make_block, make_output_block = DiscriminatorBlock, DiscriminatorOutput

    def make_from_rgb(self, num_channels: int, channels: int) -> nn.Module:
        return Conv(num_channels, channels, 1)

    def forward(self, images: torch.Tensor, alpha: Alpha = 1.0) -> torch.Tensor:
        level, alpha = check_images(images, self.num_channels, self.widths), check_alpha(alpha)
        x = lrelu(self.from_rgb[level](images))
        for k in range(level, 0, -1):
            x = self.blocks[k](x)
            if k == level and fading(alpha):
                old = lrelu(self.from_rgb[level - 1](F.avg_pool2d(images, 2)))
                x = fade(x, old, alpha)
        return self.blocks[0](x)
