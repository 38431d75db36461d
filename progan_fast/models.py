"""The fast ProGAN: same constructor, forward signature and state_dict keys as `progan_fast.reference`,
built from the drop-in layers so every op runs on the selected backend (fused where a kernel exists).

Memory format: `G.to(memory_format=torch.channels_last)` (as `Module.to`) also sets `G.memory_format`, and the
forward passes then keep every activation in that format: G's 4x4 input (reshaped from its dense layer), D's
input images and D's minibatch-stddev output are laid out in it; every other op keeps its input's format. The
kernels read channels_last inputs with vector loads, and each kernel is compiled for one layout only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import functional as F
from .architecture import (DiscriminatorSkeleton, GeneratorSkeleton, check_images, check_latents, fading,
                           mbstd_enabled)
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev
from .layout import in_memory_format
from .ops._checks import Alpha, check_alpha

SQRT2 = math.sqrt(2.0)


class FollowsMemoryFormat(nn.Module):
    """`memory_format`: the layout of the activations (torch.contiguous_format or torch.channels_last), set by
    `.to(memory_format=...)` together with the parameters'."""

    memory_format = torch.contiguous_format

    def to(self, *args, **kwargs):
        if kwargs.get("memory_format") in (torch.contiguous_format, torch.channels_last):
            self.memory_format = kwargs["memory_format"]
        return super().to(*args, **kwargs)


class GeneratorInput(nn.Module):
    def __init__(self, latent_size: int, channels: int):
        super().__init__()
        self.dense = EqualizedLinear(latent_size, channels * 16, bias=False, gain=SQRT2 / 4)
        self.bias = nn.Parameter(torch.zeros(channels))  # one per feature map, as in the official code
        self.conv = EqualizedConv2d(channels, channels, 3, activation="lrelu", pixel_norm=True)

    def forward(self, z: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        x = self.dense(F.pixel_norm(z)).reshape(z.shape[0], -1, 4, 4).contiguous(memory_format=memory_format)
        return self.conv(F.pixel_norm(F.bias_act(x, self.bias, "lrelu")))


class GeneratorBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", pixel_norm=True, upsample=True)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, activation="lrelu", pixel_norm=True)


class Generator(FollowsMemoryFormat, GeneratorSkeleton):
    """G(z, res, alpha=1.0) -> images [N, num_channels, res, res]. alpha: float in [0, 1] or 0-dim tensor."""

    make_input_block, make_block = GeneratorInput, GeneratorBlock

    def make_to_rgb(self, channels: int, num_channels: int) -> nn.Module:
        return EqualizedConv2d(channels, num_channels, 1, gain=1.0)

    def forward(self, z: torch.Tensor, res: int, alpha: Alpha = 1.0) -> torch.Tensor:
        check_latents(z, self.latent_size)
        level, alpha = self.widths.level(res), check_alpha(alpha)
        features = [self.blocks[0](z, self.memory_format)]
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

    def forward(self, x: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        # The torch backend's stddev concatenates into a contiguous tensor whatever the input's layout; the triton
        # backend's output is channels_last with aligned pixels already.
        features = in_memory_format(self.mbstd(x), memory_format)
        return self.dense1(self.dense0(self.conv(features).flatten(1)))


class Discriminator(FollowsMemoryFormat, DiscriminatorSkeleton):
    """D(images, alpha=1.0) -> scores [N, 1]; the resolution is read from the images."""

    make_block, make_output_block = DiscriminatorBlock, DiscriminatorOutput

    def make_from_rgb(self, num_channels: int, channels: int) -> nn.Module:
        return EqualizedConv2d(num_channels, channels, 1, activation="lrelu")

    def forward(self, images: torch.Tensor, alpha: Alpha = 1.0) -> torch.Tensor:
        level, alpha = check_images(images, self.num_channels, self.widths), check_alpha(alpha)
        images = images.contiguous(memory_format=self.memory_format)
        x = self.from_rgb[level](images)
        if level > 0:
            x = self.blocks[level](x)
            if fading(alpha):
                x = F.fade(x, self.from_rgb[level - 1](F.downsample2x(images)), alpha)
        for k in range(level - 1, 0, -1):
            x = self.blocks[k](x)
        return self.blocks[0](x, self.memory_format)
