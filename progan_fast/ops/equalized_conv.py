"""equalized_conv2d: the ProGAN conv block in one op.

[2x nearest upsample] -> conv2d with weight * gain / sqrt(in * k * k) (equalized learning rate) ->
+ bias (unscaled) -> [LeakyReLU] -> [PixelNorm over channels]. One op so that a fused kernel can do
all of it in one pass. Reference: `equalized_conv2d_reference`. Layer: `progan_fast.EqualizedConv2d`.

Triton backend (kernels in `progan_fast.kernels.equalized_conv`):
- forward: one implicit-GEMM kernel for any square kernel size and padding >= 0 (stride 1), bias /
  LeakyReLU / PixelNorm in its epilogue. The upsample is never materialised: the kernel runs the equivalent
  stride-2 transposed conv (`upsample_weight`), 4 instead of 9 products per output pixel for 3x3. fp32, fp16
  and bf16 inputs (output in the input's dtype and memory format, NCHW or channels_last without a copy).
  Documented fallbacks to the reference: fp64 (only used for gradient checks), and upsample with an even
  kernel or a padding other than "same" (no ProGAN layer has them). Under torch.autocast the input is cast to
  the autocast dtype first (as F.conv2d does); the weight is cast inside the kernel.
- backward: one kernel for the epilogue (PixelNorm -> LeakyReLU -> bias), from the saved output y and
  PixelNorm factor r; the convolution's input and weight gradients use torch's convolution backward
  (cuDNN on GPU; the stride-2 transposed form with upsample). Triton versions of those have not been
  written: without a GPU to measure on, cuDNN's tuned kernels are the safer choice.
- Both passes are opaque `torch.library.custom_op`s with fake implementations, so `torch.compile` traces
  models that use them (forward and first-order backward).
- Double backward (the gradient penalty through D: no PixelNorm) works in eager mode: the backward is
  built from the epilogue-backward custom op (itself differentiable) and differentiable aten convolution
  ops. With PixelNorm the backward is once-differentiable and says so if differentiated again.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..backend import KERNEL_DTYPES, Op
from ._checks import check_activation, check_floating, check_rank, check_same_device, check_sign_mask_slope
from .bias_act import bias_act_cuda, bias_act_reference
from .fade import upsample2x
from .pixel_norm import pixel_norm_reference


def equalized_scale(weight: torch.Tensor, gain: float) -> float:
    """gain / sqrt(fan_in) with fan_in = in_channels * kernel area (works for conv and dense weights)."""
    fan_in = weight[0].numel()
    return gain / math.sqrt(fan_in)


def same_padding(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(f"padding=None ('same') needs an odd kernel size, got {kernel_size}; pass padding explicitly")
    return kernel_size // 2


def equalized_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                               padding: int, activation: Optional[str], negative_slope: float, pixel_norm: bool,
                               upsample: bool, eps: float) -> torch.Tensor:
    if upsample:
        x = upsample2x(x)
    y = F.conv2d(x, weight * equalized_scale(weight, gain), padding=padding)
    y = bias_act_reference(y, bias, activation, negative_slope)
    return pixel_norm_reference(y, eps) if pixel_norm else y


_op = Op("equalized_conv2d", equalized_conv2d_reference)


# ---------------------------------------------------------------------------------------------
# Triton backend

def _empty_like_layout(x: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of `shape` in x's dtype, device and memory format (channels_last stays so)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def upsample_weight(weight: torch.Tensor) -> torch.Tensor:
    """The [out, in, k + 1, k + 1] kernel W with conv_transpose2d(x, W.transpose(0, 1), stride=2, padding=k // 2)
    == conv2d(upsample2x(x), weight, padding=k // 2) for odd k: each tap is a sum of the 2x2 neighbouring taps
    of the zero-padded kernel, flipped (the official code's "fused_scale")."""
    return F.avg_pool2d(F.pad(weight, (1, 1, 1, 1)), 2, stride=1, divisor_override=1).flip(2, 3)


def upsample_weight_grad(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of `upsample_weight`: a [out, in, k + 1, k + 1] gradient back to [out, in, k, k]."""
    return F.avg_pool2d(grad.flip(2, 3), 2, stride=1, divisor_override=1)


def _output_size(x: torch.Tensor, weight: torch.Tensor, padding: int, upsample: bool) -> Tuple[int, int]:
    height, width = (s * (2 if upsample else 1) + 2 * padding - weight.shape[2] + 1 for s in x.shape[2:])
    return height, width


def _conv_outputs(x: torch.Tensor, weight: torch.Tensor, padding: int, pixel_norm: bool,
                  upsample: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, r) to be written by the forward kernel; r is empty without PixelNorm."""
    size = _output_size(x, weight, padding, upsample)
    y = _empty_like_layout(x, (x.shape[0], weight.shape[0], *size))
    r = x.new_empty((x.shape[0], *size) if pixel_norm else (0,), dtype=torch.float32)
    return y, r


@torch.library.custom_op("progan_fast::equalized_conv2d", mutates_args=())
def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: float, padding: int,
             lrelu: bool, negative_slope: float, pixel_norm: bool, upsample: bool,
             eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import equalized_conv as kernels  # imports triton on first use only
    y, r = _conv_outputs(x, weight, padding, pixel_norm, upsample)
    kernels.conv_forward(x, upsample_weight(weight) if upsample else weight, bias, y, r, scale, padding, lrelu,
                         negative_slope, pixel_norm, upsample, eps)
    return y, r


@_conv_op.register_fake
def _conv_op_fake(x, weight, bias, scale, padding, lrelu, negative_slope, pixel_norm, upsample, eps):
    return _conv_outputs(x, weight, padding, pixel_norm, upsample)


@torch.library.custom_op("progan_fast::equalized_conv2d_epilogue_backward", mutates_args=())
def _epilogue_backward_op(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, lrelu: bool, negative_slope: float,
                          pixel_norm: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(gradient of the pre-activation v = conv + bias, gradient of the bias in fp32)."""
    from ..kernels import equalized_conv as kernels
    dv = _empty_like_layout(y, tuple(y.shape))
    return dv, kernels.epilogue_backward(dy, y, r, dv, lrelu, negative_slope, pixel_norm)


@_epilogue_backward_op.register_fake
def _epilogue_backward_op_fake(dy, y, r, lrelu, negative_slope, pixel_norm):
    return _empty_like_layout(y, tuple(y.shape)), y.new_empty((y.shape[1],), dtype=torch.float32)


def _epilogue_backward_setup(ctx, inputs, output):
    _, y, _, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm = inputs
    ctx.save_for_backward(y)


def _epilogue_backward_backward(ctx, grad_dv, grad_db):
    """Without PixelNorm the epilogue backward is linear in dy: dv = mask(y) * dy, db = sum(dv), and its
    gradient with respect to y is zero almost everywhere (the mask is piecewise constant)."""
    if ctx.pixel_norm:
        raise RuntimeError("equalized_conv2d (triton backend): the backward of the PixelNorm epilogue is "
                           "once-differentiable; for higher-order gradients through pixel_norm=True use "
                           "progan_fast.use_backend('torch')")
    grad = grad_dv + grad_db.to(grad_dv.dtype)[None, :, None, None]
    if ctx.lrelu:
        grad = torch.where(ctx.saved_tensors[0] > 0, grad, grad * ctx.negative_slope)
    return grad, None, None, None, None, None


_epilogue_backward_op.register_autograd(_epilogue_backward_backward, setup_context=_epilogue_backward_setup)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, ctx.scale, ctx.padding, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm, ctx.upsample, _ = inputs
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, weight, *output)


def _conv_backward(ctx, dy, _grad_r):
    """Built from differentiable ops (see _epilogue_backward_backward), so create_graph=True works."""
    x, weight, y, r = ctx.saved_tensors
    if ctx.lrelu or ctx.pixel_norm:
        dv, db = _epilogue_backward_op(dy, y, r, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm)
    else:
        dv, db = dy, dy.sum(dim=(0, 2, 3), dtype=torch.float32)
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x = grad_weight = grad_bias = None
    if need_x or need_weight:
        # With upsample, as the forward: the equivalent stride-2 transposed conv, so neither the upsampled copy
        # of x nor its gradient is ever made (and 16 instead of 36 products per input pixel and 3x3 channel pair).
        w_scaled = weight * ctx.scale
        w_conv = upsample_weight(w_scaled).transpose(0, 1) if ctx.upsample else w_scaled
        stride = 2 if ctx.upsample else 1
        grad_x, grad_w_conv, _ = torch.ops.aten.convolution_backward(
            dv, x, w_conv.to(x.dtype), None, [stride] * 2, [ctx.padding] * 2, [1, 1], ctx.upsample, [0, 0], 1,
            [need_x, need_weight, False])
        if need_weight:
            grad_w_scaled = upsample_weight_grad(grad_w_conv.transpose(0, 1)) if ctx.upsample else grad_w_conv
            grad_weight = grad_w_scaled.to(weight.dtype) * ctx.scale
    if need_bias:
        grad_bias = db.to(ctx.bias_dtype)
    return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def equalized_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                            padding: int, activation: Optional[str], negative_slope: float, pixel_norm: bool,
                            upsample: bool, eps: float) -> torch.Tensor:
    if torch.is_autocast_enabled(x.device.type):  # like F.conv2d: compute in the autocast dtype
        x = x.to(torch.get_autocast_dtype(x.device.type))
    k = weight.shape[2]
    if x.dtype not in KERNEL_DTYPES or (upsample and (k % 2 == 0 or padding != k // 2)):
        return equalized_conv2d_reference(x, weight, bias, gain, padding, activation, negative_slope, pixel_norm,
                                          upsample, eps)
    if padding < 0:
        raise ValueError(f"equalized_conv2d: padding must be >= 0, got {padding}")
    check_sign_mask_slope("equalized_conv2d", "triton", activation, negative_slope)
    height, width = _output_size(x, weight, padding, upsample)
    if min(height, width) < 1:
        raise ValueError(f"equalized_conv2d: a {weight.shape[2]}x{weight.shape[2]} kernel with padding {padding} "
                         f"does not fit an input of spatial size {tuple(x.shape[2:])} (upsample={upsample})")
    if max(math.prod(x.shape[1:]), weight.shape[0] * height * width) >= 2 ** 31:
        raise ValueError("equalized_conv2d (triton backend): one image of the input or output has 2**31 elements "
                         "or more (the kernel indexes within an image in int32); use the torch backend")
    y, _ = _conv_op(x, weight, bias, equalized_scale(weight, gain), int(padding), activation == "lrelu",
                    float(negative_slope), bool(pixel_norm), bool(upsample), float(eps))
    return y


_op.register("triton", equalized_conv2d_triton)


def equalized_conv2d_cuda(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                          padding: int, activation: Optional[str], negative_slope: float, pixel_norm: bool,
                          upsample: bool, eps: float) -> torch.Tensor:
    """cuda backend: the convolution stays on cuDNN (its double backward is convolutions); bias + LeakyReLU run
    in the fused CUDA kernels with their first- and second-order backward."""
    if upsample:
        x = upsample2x(x)
    y = F.conv2d(x, (weight * equalized_scale(weight, gain)).to(x.dtype), padding=padding)
    y = bias_act_cuda(y, bias, activation, negative_slope)
    return pixel_norm_reference(y, eps) if pixel_norm else y


_op.register("cuda", equalized_conv2d_cuda)


def equalized_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     gain: float = 2 ** 0.5, padding: Optional[int] = None, activation: Optional[str] = None,
                     negative_slope: float = 0.2, pixel_norm: bool = False, upsample: bool = False,
                     eps: float = 1e-8) -> torch.Tensor:
    """Equalized-LR conv2d (stride 1) with optional upsample, bias, LeakyReLU and PixelNorm.

    x: [N, in, H, W]; weight: [out, in, k, k] stored as N(0, 1); bias: [out] or None.
    padding None means "same" (odd k). Output: [N, out, H', W'] (H' = 2H with upsample).
    """
    check_rank("equalized_conv2d", x, 4, "[N, C, H, W]")
    check_rank("equalized_conv2d weight", weight, 4, "[out_channels, in_channels, k, k]")
    check_floating("equalized_conv2d", x)
    check_floating("equalized_conv2d weight", weight)
    check_same_device("equalized_conv2d", x, weight, bias)
    activation = check_activation(activation)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"equalized_conv2d: input has {x.shape[1]} channels but the weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if weight.shape[2] != weight.shape[3]:
        raise ValueError(f"equalized_conv2d needs a square kernel, got weight shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"equalized_conv2d: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    if padding is None:
        padding = same_padding(weight.shape[2])
    return _op(x, weight, bias, gain, padding, activation, negative_slope, pixel_norm, upsample, eps)
