"""Triton backend of equalized_conv2d (`progan_fast.ops.equalized_conv`): an implicit-GEMM convolution with a
fused epilogue, and the fused backward of that epilogue.

Forward, one program per tile of [BLOCK_M output pixels] x [BLOCK_N output channels]:
    [2x nearest upsample] -> conv (stride 1, any square k and padding; with upsample odd k, same padding)
    -> * equalized-LR scale -> + bias -> [LeakyReLU] -> [PixelNorm over the output channels].
GEMM view: M = N * H_out * W_out pixels, N = out channels, K = taps * in channels, accumulated in fp32.
The upsample is never materialised: the kernel runs the equivalent stride-2 transposed convolution
(`upsample_weight`), one output phase (2x2 parity class of output pixels) per program, reading x at its own
resolution (the official code's "fused_scale"): 4 instead of 9 products per 3x3 output pixel.

Layouts: the forward kernel addresses every tensor through its strides and runs on channels_last inputs
(also the padded channels_last of `progan_fast.layout`, which minibatch stddev writes for D's 513-channel conv):
16-byte loads along the channels. Inputs in other layouts (NCHW) are converted in and out, since with scalar
loads along the channels the large tiles spill registers on sm_90. Outputs are in the input's memory format.

Precision for fp32 inputs: `tl.dot(..., input_precision="ieee")` (exact fp32) unless the tensor is on CUDA and
`torch.backends.cudnn.conv.fp32_precision` is "tf32" (the default; set by it, by the legacy `cudnn.allow_tf32` or
inherited from `cudnn.fp32_precision` and `torch.backends.fp32_precision`), in which case "tf32": the setting that
governs torch's own convolutions, so the triton backend rounds the way the reference path does on that machine.
fp16/bf16 inputs use the tensor cores directly; the accumulator is always fp32; the output has the input dtype.
Under torch.autocast the input is cast to the autocast dtype first (as F.conv2d does), and the weight to the
input's dtype with its preparation, once per weight version (`progan_fast.ops.weight_cache`). fp64 (used only for
gradient checks), and upsample with an even kernel or a padding other than "same" (no ProGAN layer has them), run
the torch reference.

PixelNorm needs every output channel of a pixel: with pixel_norm the channel tile spans all output channels
(BLOCK_N = next_pow2(out), at most 512 in ProGAN), with 64 pixel rows so that 16-bit products (and tf32 ones up
to 256 channels) run on Hopper's wgmma (`forward_tiles`). A separate normalisation pass would re-read and
re-write the whole output, which costs most at the high resolutions, where the memory-bound layers have few
channels and a full-width tile is cheap anyway.

Backward: one kernel for the epilogue (PixelNorm -> LeakyReLU -> bias), from the saved output y and PixelNorm
factor r; the convolution's input and weight gradients use torch's convolution backward (cuDNN on a GPU; the
stride-2 transposed form with upsample). Without PixelNorm (the discriminator's layers) the backward is built from
differentiable ops (the epilogue backward is a custom op with its own autograd), so the gradient penalty's double
backward works in eager mode; with PixelNorm it is once-differentiable and says so if differentiated again. Both
passes are opaque custom ops with fake implementations, so torch.compile traces models that use them (forward and
first-order backward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from progan_fast.backend import KERNEL_DTYPES
from progan_fast.kernels._common import like
from progan_fast.layout import empty_4d, empty_channels_last, is_channels_last
from progan_fast.ops._checks import check_sign_mask_slope
from progan_fast.ops.equalized_conv import (equalized_conv2d_op, equalized_conv2d_reference, equalized_scale,
                                            output_size)
from progan_fast.ops.weight_cache import differentiable_prepared_weight, prepared_weight

_ACC_ELEMENTS = 8192  # accumulator elements per program without PixelNorm (64 x 128) and of the epilogue backward
_MIN_DOT_BLOCK = 16  # tl.dot needs every tile dimension >= 16


@triton.jit
def _conv_tap_block(x_pix, w_tap, acc, c0, C_in, sxc, swi, swo, offs_n, pix_ok, n_ok, PARTIAL: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the products of one tap over input channels c0 .. c0 + BLOCK_K (PARTIAL: fewer are left)."""
    offs_k = c0 + tl.arange(0, BLOCK_K)
    a_mask = pix_ok[:, None]
    b_mask = n_ok[None, :]
    if PARTIAL:
        k_ok = offs_k < C_in
        a_mask = a_mask & k_ok[None, :]
        b_mask = b_mask & k_ok[:, None]
    a = tl.load(x_pix[:, None] + offs_k[None, :] * sxc, mask=a_mask, other=0.0)
    b = tl.load(w_tap + offs_k[:, None] * swi + offs_n[None, :] * swo, mask=b_mask, other=0.0)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, r_ptr,
                     C_in, H_in, W_in, C_out, H_out, W_out, H_grid, W_grid, num_rows, padding,
                     sxn, sxc, sxh, sxw, swo, swi, swh, sww, syn, syc, syh, syw,
                     scale, negative_slope, eps,
                     TAPS: tl.constexpr, TAP_STEP: tl.constexpr, UPSAMPLE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     LRELU: tl.constexpr, PIXEL_NORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # GEMM rows: pixels of the (H_grid, W_grid) grid, the output without upsample, the input with it.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < num_rows
    n_ok = offs_n < C_out
    image = (offs_m // (H_grid * W_grid)).to(tl.int64)
    gh = (offs_m // W_grid) % H_grid
    gw = offs_m % W_grid
    if UPSAMPLE:
        # Program axis 2 is the output phase (a_h, a_w): output pixel (2 gh + a_h, 2 gw + a_w) reads input
        # rows gh + d0_h + j (j < TAPS) through tap wh0 - 2 j of the transposed-conv kernel (see upsample_weight).
        phase = tl.program_id(2)
        a_h = phase // 2
        a_w = phase % 2
        ho = 2 * gh + a_h
        wo = 2 * gw + a_w
        d0_h = -((padding - a_h + 1) // 2)  # floor((a - padding) / 2), with a non-negative dividend
        d0_w = -((padding - a_w + 1) // 2)
        ih0 = gh + d0_h
        iw0 = gw + d0_w
        wh0 = a_h + padding - 2 * d0_h
        ww0 = a_w + padding - 2 * d0_w
    else:
        ho = gh
        wo = gw
        ih0 = gh - padding
        iw0 = gw - padding
        wh0 = 0
        ww0 = 0
    x_image = x_ptr + image * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for jh in tl.static_range(TAPS):
        ih = ih0 + jh
        h_ok = (ih >= 0) & (ih < H_in)
        ih = tl.where(h_ok, ih, 0)
        for jw in tl.static_range(TAPS):
            iw = iw0 + jw
            pix_ok = m_ok & h_ok & (iw >= 0) & (iw < W_in)
            iw = tl.where(pix_ok, iw, 0)
            x_pix = x_image + ih * sxh + iw * sxw
            w_tap = w_ptr + (wh0 + TAP_STEP * jh) * swh + (ww0 + TAP_STEP * jw) * sww
            # Whole channel blocks load without a channel mask, so that their loads can be 16-byte vectors; a
            # mask on a count that is not a multiple of 16 (D's 513 channels) would make every load scalar.
            for c0 in range(0, C_in - C_in % BLOCK_K, BLOCK_K):
                acc = _conv_tap_block(x_pix, w_tap, acc, c0, C_in, sxc, swi, swo, offs_n, pix_ok, n_ok, False,
                                      DOT_PRECISION, BLOCK_K)
            if C_in % BLOCK_K != 0:
                acc = _conv_tap_block(x_pix, w_tap, acc, C_in - C_in % BLOCK_K, C_in, sxc, swi, swo, offs_n, pix_ok,
                                      n_ok, True, DOT_PRECISION, BLOCK_K)

    # Epilogue. Padded channels stay exactly 0 through it, so they do not disturb the PixelNorm mean.
    acc = acc * scale
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if LRELU:
        acc = tl.where(acc > 0, acc, acc * negative_slope)
    if PIXEL_NORM:
        r = tl.rsqrt(tl.sum(acc * acc, axis=1) / C_out + eps)
        acc = acc * r[:, None]
        tl.store(r_ptr + (image * H_out + ho) * W_out + wo, r, mask=m_ok)
    y_pix = y_ptr + image * syn + ho * syh + wo * syw
    tl.store(y_pix[:, None] + offs_n[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _epilogue_bwd_kernel(dy_ptr, y_ptr, r_ptr, dv_ptr, db_ptr,
                         C, H, W, num_pixels,
                         sdn, sdc, sdh, sdw, syn, syc, syh, syw, svn, svc, svh, svw,
                         negative_slope,
                         LRELU: tl.constexpr, PIXEL_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Gradient of the pre-activation v (conv + bias) from dy, y = PN(lrelu(v)) and r = PN's rsqrt factor:
    du = r * (dy - y * mean_c(dy * y)), dv = du * (1 if y > 0 else slope); plus this tile's partial bias
    gradient (sum of dv over its pixels), written to row pid of db (summed on the host: deterministic, no atomics)."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    m_ok = offs_m < num_pixels
    mask = m_ok[:, None] & (offs_c < C)[None, :]
    image = (offs_m // (H * W)).to(tl.int64)
    h = (offs_m // W) % H
    w = offs_m % W
    dy = tl.load(dy_ptr + (image * sdn + h * sdh + w * sdw)[:, None] + offs_c[None, :] * sdc, mask=mask, other=0.0)
    y = tl.load(y_ptr + (image * syn + h * syh + w * syw)[:, None] + offs_c[None, :] * syc, mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    y = y.to(tl.float32)
    grad = dy
    if PIXEL_NORM:
        r = tl.load(r_ptr + offs_m, mask=m_ok, other=0.0)
        mean_dy_y = tl.sum(dy * y, axis=1) / C
        grad = r[:, None] * (dy - y * mean_dy_y[:, None])
    if LRELU:  # y and the pre-activation share their sign (r > 0, slope >= 0)
        grad = tl.where(y > 0, grad, grad * negative_slope)
    tl.store(dv_ptr + (image * svn + h * svh + w * svw)[:, None] + offs_c[None, :] * svc,
             grad.to(dv_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + pid * C + offs_c, tl.sum(grad, axis=0), mask=offs_c < C)


def dot_precision(x: torch.Tensor) -> str:
    """"ieee" only for exact fp32; fp16/bf16 operands get Triton's default, under which they run on tensor cores.
    The legacy `cudnn.allow_tf32` getter raises once the new API has set conv and rnn apart: read the conv's."""
    tf32_convs = x.is_cuda and torch.backends.cudnn.conv.fp32_precision == "tf32"
    return "ieee" if x.dtype == torch.float32 and not tf32_convs else "tf32"


def _pow2_at_least(n: int, floor: int) -> int:
    return max(triton.next_power_of_2(n), floor)


@dataclass(frozen=True)
class ForwardTiles:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# The PixelNorm tile spans all output channels: (BLOCK_M, BLOCK_K, num_warps, num_stages) by BLOCK_N, for the
# tensor cores (16-bit, tf32) and the CUDA cores (exact fp32); other widths take the default. Each entry compiles
# for sm_90 without register spills with the ptxas of triton 3.6 and of 3.9 (candidates compiled with both, see
# tests/hopper_compile.py), where the two differ by up to a few hundred bytes of spills on the same tile.
_PIXEL_NORM_TILES = {
    "16-bit": ({512: (64, 16, 16, 3), 256: (64, 32, 8, 3)}, (64, 32, 4, 3)),
    "tf32": ({512: (32, 16, 8, 2), 256: (64, 32, 8, 3)}, (64, 32, 4, 3)),
    "ieee": ({512: (16, 16, 8, 3), 256: (16, 16, 4, 3), 128: (16, 16, 8, 3)}, (64, 16, 4, 3)),
}


def forward_tiles(c_in: int, c_out: int, num_rows: int, pixel_norm: bool, dtype: torch.dtype,
                  precision: str) -> ForwardTiles:
    """The forward kernel's tile for a GEMM of num_rows x c_out x (taps * c_in), checked for sm_90 at every ProGAN
    layer by tests/hopper_compile.py (compiles, no spills, shared memory within limits, wgmma for 16-bit inputs).

    Without PixelNorm: 64 x 128 (more rows for fewer channels), 32 channels per step; on the CUDA cores (exact
    fp32, whose operands live in registers) 64 x 64 and 16 channels. With PixelNorm the tile spans all output
    channels (up to 512) and keeps 64 rows for the tensor cores: Hopper's wgmma multiplies 64 rows per
    warpgroup, and the former 32 x 512 tile ran every generator conv at 512 channels (4..32 px, the
    compute-bound layers) on the older mma.sync. 64 x 512 in 16-bit takes four warpgroups of 64 x 128 (64
    accumulator registers per thread). tf32 at 512 channels stays at 32 x 512 on mma.sync: 64 x 512 fp32 needs
    128 KB of shared memory to reorder its accumulator and spills with triton 3.6."""
    kind = "ieee" if dtype == torch.float32 and precision == "ieee" else "tf32" if dtype == torch.float32 else "16-bit"
    if pixel_norm:
        block_n = _pow2_at_least(c_out, _MIN_DOT_BLOCK)
        by_width, default = _PIXEL_NORM_TILES[kind]
        block_m, block_k, num_warps, num_stages = by_width.get(block_n, default)
    elif kind == "ieee":
        block_n = min(64, _pow2_at_least(c_out, _MIN_DOT_BLOCK))
        block_m, block_k, num_warps, num_stages = 64, _MIN_DOT_BLOCK, 4, 3
    else:
        block_n = min(128, _pow2_at_least(c_out, _MIN_DOT_BLOCK))
        block_m, block_k, num_warps, num_stages = min(128, _ACC_ELEMENTS // block_n), 32, 4, 3
    return ForwardTiles(block_m=min(block_m, _pow2_at_least(num_rows, _MIN_DOT_BLOCK)),  # small maps: no idle rows
                        block_n=block_n, block_k=min(block_k, _pow2_at_least(c_in, _MIN_DOT_BLOCK)),
                        num_warps=num_warps, num_stages=num_stages)


def _launch_forward(x: torch.Tensor, w_taps: torch.Tensor, bias: Optional[torch.Tensor], y: torch.Tensor,
                    r: torch.Tensor, scale: float, padding: int, lrelu: bool, negative_slope: float,
                    pixel_norm: bool, upsample: bool, eps: float) -> None:
    """Writes y [N, out, H_out, W_out] and, with pixel_norm, r [N, H_out, W_out] (fp32 PixelNorm factors).

    w_taps: the weight from `taps_weight`."""
    n, c_out, h_out, w_out = y.shape
    h_grid, w_grid = (x.shape[2], x.shape[3]) if upsample else (h_out, w_out)
    num_rows = n * h_grid * w_grid
    if num_rows == 0 or c_out == 0:
        return
    precision = dot_precision(x)
    tiles = forward_tiles(x.shape[1], c_out, num_rows, pixel_norm, x.dtype, precision)
    grid = (triton.cdiv(num_rows, tiles.block_m), triton.cdiv(c_out, tiles.block_n), 4 if upsample else 1)
    swh, sww, swi, swo = w_taps.stride()
    k = w_taps.shape[0]
    _conv_fwd_kernel[grid](
        x, w_taps, bias.contiguous() if bias is not None else y, y, r if pixel_norm else y,  # y: unread placeholder
        x.shape[1], x.shape[2], x.shape[3], c_out, h_out, w_out, h_grid, w_grid, num_rows, padding,
        *x.stride(), swo, swi, swh, sww, *y.stride(),
        scale, negative_slope, eps,
        TAPS=k // 2 if upsample else k, TAP_STEP=-2 if upsample else 1, UPSAMPLE=upsample, HAS_BIAS=bias is not None,
        LRELU=lrelu, PIXEL_NORM=pixel_norm, DOT_PRECISION=precision,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps,
        num_stages=tiles.num_stages)


def _launch_epilogue_backward(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, dv: torch.Tensor, lrelu: bool,
                      negative_slope: float, pixel_norm: bool) -> torch.Tensor:
    """Writes dv, the gradient of the pre-activation; returns the bias gradient (fp32 [C])."""
    n, c, h, w = y.shape
    num_pixels = n * h * w
    if num_pixels == 0 or c == 0:
        return torch.zeros(c, dtype=torch.float32, device=y.device)
    block_c = triton.next_power_of_2(c)
    # At most 64 rows, and 8 warps for 4096 elements: ptxas keeps 32 elements per thread (128 x 32 and 64 x 64
    # bf16 tiles with 4 warps) in 64 registers and spills (tests/hopper_compile.py).
    block_m = max(1, min(64, _ACC_ELEMENTS // block_c, triton.next_power_of_2(num_pixels)))
    grid = (triton.cdiv(num_pixels, block_m),)
    db_partial = torch.empty((grid[0], c), dtype=torch.float32, device=y.device)
    _epilogue_bwd_kernel[grid](
        dy, y, r if pixel_norm else y, dv, db_partial, c, h, w, num_pixels,  # y: unread placeholder pointer
        *dy.stride(), *y.stride(), *dv.stride(), negative_slope,
        LRELU=lrelu, PIXEL_NORM=pixel_norm, BLOCK_M=block_m, BLOCK_C=block_c,
        num_warps=8 if block_m * block_c == 4096 else 4)
    return db_partial.sum(0)


def upsample_weight(weight: torch.Tensor) -> torch.Tensor:
    """The [out, in, k + 1, k + 1] kernel W with conv_transpose2d(x, W.transpose(0, 1), stride=2, padding=k // 2)
    == conv2d(upsample2x(x), weight, padding=k // 2) for odd k: each tap is a sum of the 2x2 neighbouring taps
    of the zero-padded kernel, flipped (the official code's "fused_scale")."""
    return F.avg_pool2d(F.pad(weight, (1, 1, 1, 1)), 2, stride=1, divisor_override=1).flip(2, 3)


def upsample_weight_grad(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of `upsample_weight`: a [out, in, k + 1, k + 1] gradient back to [out, in, k, k]."""
    return F.avg_pool2d(grad.flip(2, 3), 2, stride=1, divisor_override=1)


def taps_weight(weight: torch.Tensor, upsample: bool, dtype: torch.dtype) -> torch.Tensor:
    """The forward kernel's weight: [k, k, in, out] in the input's dtype, so that the weight tile loads are
    contiguous along out (coalesced) and half the bytes for 16-bit inputs. With upsample, of the
    [out, in, k + 1, k + 1] kernel of the equivalent stride-2 transposed conv (`upsample_weight`, same padding):
    each output phase then needs (k + 1) / 2 taps per dimension instead of k (4 instead of 9 products per 3x3
    output pixel), and x is read at its own size. Prepared once per weight version (`prepared_weight`)."""
    def build(w):
        taps_layout = (upsample_weight(w) if upsample else w).permute(2, 3, 1, 0)
        return torch.empty(taps_layout.shape, dtype=dtype, device=w.device).copy_(taps_layout)
    return prepared_weight(weight, "triton conv taps", (upsample, dtype), build)


def backward_weight(weight: torch.Tensor, scale: float, upsample: bool, dtype: torch.dtype) -> torch.Tensor:
    """The scaled weight of the convolution backward in the input's dtype (with upsample the transposed
    [in, out, k + 1, k + 1] kernel of the stride-2 form), prepared once per weight version and differentiable
    (the gradient penalty differentiates the backward) through `backward_weight_grad`."""
    def build(w):
        w_scaled = w * scale
        return (upsample_weight(w_scaled).transpose(0, 1) if upsample else w_scaled).to(dtype)
    return differentiable_prepared_weight(weight, "triton conv backward", (scale, upsample, dtype), build,
                                          lambda grad: backward_weight_grad(grad, scale, upsample, weight.dtype))


def backward_weight_grad(grad: torch.Tensor, scale: float, upsample: bool, dtype: torch.dtype) -> torch.Tensor:
    """The adjoint of `backward_weight`: a gradient with respect to its result back to the weight's."""
    grad_w_scaled = upsample_weight_grad(grad.transpose(0, 1)) if upsample else grad
    return grad_w_scaled.to(dtype) * scale


def _conv_outputs(x: torch.Tensor, weight: torch.Tensor, padding: int, pixel_norm: bool,
                  upsample: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, r) to be written by the forward kernel; r is empty without PixelNorm."""
    size = output_size(x, weight, padding, upsample)
    y = empty_4d((x.shape[0], weight.shape[0], *size), x)
    r = x.new_empty((x.shape[0], *size) if pixel_norm else (0,), dtype=torch.float32)
    return y, r


@torch.library.custom_op("progan_fast::equalized_conv2d", mutates_args=())
def _conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: float, padding: int,
                  lrelu: bool, negative_slope: float, pixel_norm: bool, upsample: bool,
                  eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    y, r = _conv_outputs(x, weight, padding, pixel_norm, upsample)
    w_taps = taps_weight(weight, upsample, x.dtype)
    if is_channels_last(y):
        _launch_forward(x, w_taps, bias, y, r, scale, padding, lrelu, negative_slope, pixel_norm, upsample, eps)
        return y, r
    # The kernel runs channels_last: in NCHW its loads along the channels are scalar and every large tile spills
    # registers on sm_90. Other layouts are converted in and out (as cuDNN's tensor-core convolutions do).
    x_channels_last = empty_channels_last(x.shape, x.dtype, x.device, aligned_pixels=True).copy_(x)
    y_channels_last = torch.empty_like(y, memory_format=torch.channels_last)
    _launch_forward(x_channels_last, w_taps, bias, y_channels_last, r, scale, padding, lrelu, negative_slope,
                    pixel_norm, upsample, eps)
    return y.copy_(y_channels_last), r


@_conv_forward.register_fake
def _(x, weight, bias, scale, padding, lrelu, negative_slope, pixel_norm, upsample, eps):
    return _conv_outputs(x, weight, padding, pixel_norm, upsample)


@torch.library.custom_op("progan_fast::equalized_conv2d_epilogue_backward", mutates_args=())
def _epilogue_backward(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, lrelu: bool, negative_slope: float,
                       pixel_norm: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(gradient of the pre-activation v = conv + bias, gradient of the bias in fp32)."""
    dv = empty_4d(tuple(y.shape), y)
    # dy in y's layout, so that the loads of both are coalesced: D's 4x4 conv gets its gradient in NCHW from the
    # flatten before the dense layer, whatever the activations' format.
    return dv, _launch_epilogue_backward(like(dy, y), y, r, dv, lrelu, negative_slope, pixel_norm)


@_epilogue_backward.register_fake
def _(dy, y, r, lrelu, negative_slope, pixel_norm):
    return empty_4d(tuple(y.shape), y), y.new_empty((y.shape[1],), dtype=torch.float32)


def _save_epilogue_output(ctx, inputs, output):
    _, y, _, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm = inputs
    ctx.save_for_backward(y)


def _epilogue_backward_grad(ctx, grad_dv, grad_db):
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


_epilogue_backward.register_autograd(_epilogue_backward_grad, setup_context=_save_epilogue_output)


def _save_conv_inputs(ctx, inputs, output):
    x, weight, bias, ctx.scale, ctx.padding, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm, ctx.upsample, _ = inputs
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, weight, *output)


def _conv_forward_grad(ctx, dy, _grad_r):
    """Built from differentiable ops (see _epilogue_backward_grad), so create_graph=True works."""
    x, weight, y, r = ctx.saved_tensors
    if ctx.lrelu or ctx.pixel_norm:
        dv, db = _epilogue_backward(dy, y, r, ctx.lrelu, ctx.negative_slope, ctx.pixel_norm)
    else:
        dv, db = dy, dy.sum(dim=(0, 2, 3), dtype=torch.float32)
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x = grad_weight = grad_bias = None
    if need_x or need_weight:
        # With upsample, as the forward: the equivalent stride-2 transposed conv, so neither the upsampled copy
        # of x nor its gradient is ever made (and 16 instead of 36 products per input pixel and 3x3 channel pair).
        stride = 2 if ctx.upsample else 1
        grad_x, grad_w_conv, _ = torch.ops.aten.convolution_backward(
            dv, x, backward_weight(weight, ctx.scale, ctx.upsample, x.dtype), None, [stride] * 2,
            [ctx.padding] * 2, [1, 1], ctx.upsample, [0, 0], 1, [need_x, need_weight, False])
        if need_weight:
            grad_weight = backward_weight_grad(grad_w_conv, ctx.scale, ctx.upsample, weight.dtype)
    if need_bias:
        grad_bias = db.to(ctx.bias_dtype)
    return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None


_conv_forward.register_autograd(_conv_forward_grad, setup_context=_save_conv_inputs)


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
    height, width = output_size(x, weight, padding, upsample)
    if min(height, width) < 1:
        raise ValueError(f"equalized_conv2d: a {weight.shape[2]}x{weight.shape[2]} kernel with padding {padding} "
                         f"does not fit an input of spatial size {tuple(x.shape[2:])} (upsample={upsample})")
    if max(math.prod(x.shape[1:]), weight.shape[0] * height * width) >= 2 ** 31:
        raise ValueError("equalized_conv2d (triton backend): one image of the input or output has 2**31 elements "
                         "or more (the kernel indexes within an image in int32); use the torch backend")
    y, _ = _conv_forward(x, weight, bias, equalized_scale(weight, gain), int(padding), activation == "lrelu",
                         float(negative_slope), bool(pixel_norm), bool(upsample), float(eps))
    return y


equalized_conv2d_op.register("triton", equalized_conv2d_triton)
