"""CUDA backend of equalized_conv2d (`progan_fast.ops.equalized_conv`): the convolution stays on cuDNN (its double
backward is convolutions); bias + LeakyReLU run in the CUDA bias_act kernels with their first- and second-order
backward; PixelNorm (G only, no double backward needed) is the torch reference."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from progan_fast.csrc.bias_act import bias_act_cuda
from progan_fast.ops.equalized_conv import equalized_conv2d_op, equalized_scale
from progan_fast.ops.fade import upsample2x
from progan_fast.ops.pixel_norm import pixel_norm_reference
from progan_fast.ops.weight_cache import differentiable_prepared_weight


def equalized_conv2d_cuda(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                          padding: int, activation: Optional[str], negative_slope: float, pixel_norm: bool,
                          upsample: bool, eps: float) -> torch.Tensor:
    if upsample:
        x = upsample2x(x)
    scale = equalized_scale(weight, gain)
    # The scaled weight in x's dtype, prepared once per weight version (progan_fast.ops.weight_cache).
    w_scaled = differentiable_prepared_weight(weight, "cuda conv", (scale, x.dtype), lambda w: (w * scale).to(x.dtype),
                                              lambda grad: grad.to(weight.dtype) * scale)
    y = F.conv2d(x, w_scaled, padding=padding)
    y = bias_act_cuda(y, bias, activation, negative_slope)
    return pixel_norm_reference(y, eps) if pixel_norm else y


equalized_conv2d_op.register("cuda", equalized_conv2d_cuda)
