"""Edge cases of the ops, layers and models that every backend must answer alike: empty batches, zero or
negative sizes, wrong ranks and odd sizes of the resampling steps, weights or fade inputs in another dtype,
inputs that are not tensors, and alpha of the wrong type. Either both backends return torch's result, or both
raise the same clear error."""
import numpy as np
import pytest
import torch

import progan_fast as pf
from progan_fast import functional as PF


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def small_generator():
    return pf.Generator(8, latent_size=16, fmap_base=64, fmap_max=16)


NOT_A_TENSOR = "expects a torch.Tensor, got {}; convert it with torch.as_tensor()"
ONE_DTYPE = "all tensors must have one dtype, got torch.float32 and torch.float16; convert one with .to(other.dtype)"
ALPHA_TYPE = "alpha must be a float in [0, 1] or a 0-dim tensor, got {}"

# (case, call, exception, expected fragment): the same on the torch and the triton backend.
EDGE_ERRORS = [
    ("minibatch_stddev of an empty batch", lambda: PF.minibatch_stddev(randn(0, 3, 4, 4)), ValueError,
     "minibatch_stddev needs at least one sample (a statistic over the batch), got an empty batch"),
    ("Discriminator of an empty batch", lambda: pf.Discriminator(8, fmap_base=64, fmap_max=16)(randn(0, 3, 8, 8)),
     ValueError, "Discriminator needs at least one image, got an empty batch of shape (0, 3, 8, 8)"),
    ("Generator of an empty batch", lambda: small_generator()(randn(0, 16), 8), ValueError,
     "Generator needs at least one latent, got an empty batch of shape (0, 16)"),
    ("EqualizedConv2d(0, 4, 3)", lambda: pf.EqualizedConv2d(0, 4, 3), ValueError,
     "EqualizedConv2d: in_channels must be a whole number >= 1, got 0"),
    ("EqualizedConv2d(3, -1, 3)", lambda: pf.EqualizedConv2d(3, -1, 3), ValueError,
     "EqualizedConv2d: out_channels must be a whole number >= 1, got -1"),
    ("EqualizedConv2d(3, 4, 0)", lambda: pf.EqualizedConv2d(3, 4, 0, padding=0), ValueError,
     "EqualizedConv2d: kernel_size must be a whole number >= 1, got 0"),
    ("EqualizedConv2d padding -1", lambda: pf.EqualizedConv2d(3, 4, 3, padding=-1), ValueError,
     "EqualizedConv2d: padding must be a whole number >= 0, got -1"),
    ("EqualizedConv2d(3.5, 4, 3)", lambda: pf.EqualizedConv2d(3.5, 4, 3), ValueError,
     "EqualizedConv2d: in_channels must be a whole number >= 1, got 3.5"),
    ("EqualizedLinear(0, 4)", lambda: pf.EqualizedLinear(0, 4), ValueError,
     "EqualizedLinear: in_features must be a whole number >= 1, got 0"),
    ("EqualizedLinear(3, 0)", lambda: pf.EqualizedLinear(3, 0), ValueError,
     "EqualizedLinear: out_features must be a whole number >= 1, got 0"),
    ("equalized_conv2d without input channels", lambda: PF.equalized_conv2d(randn(1, 0, 4, 4), randn(2, 0, 3, 3)),
     ValueError, "equalized_conv2d: the weight of shape (2, 0, 3, 3) has no inputs (in_channels x kernel area = 0)"),
    ("equalized_linear without input features", lambda: PF.equalized_linear(randn(2, 0), randn(4, 0)), ValueError,
     "equalized_linear: the weight of shape (4, 0) has no inputs"),
    ("upsample2x of a 3-D tensor", lambda: PF.upsample2x(randn(3, 4, 4)), ValueError,
     "upsample2x expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("downsample2x of a 3-D tensor", lambda: PF.downsample2x(randn(3, 4, 4)), ValueError,
     "downsample2x expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("downsample2x of an odd size", lambda: PF.downsample2x(randn(1, 3, 5, 5)), ValueError,
     "downsample2x needs even H and W, got shape (1, 3, 5, 5)"),
    ("fade fp32 with fp16", lambda: PF.fade(randn(2, 3), randn(2, 3, dtype=torch.float16), 0.5), TypeError,
     "fade: " + ONE_DTYPE),
    ("fade_upsample fp32 with fp16",
     lambda: PF.fade_upsample(randn(1, 3, 4, 4), randn(1, 3, 2, 2, dtype=torch.float16), 0.5), TypeError,
     "fade_upsample: " + ONE_DTYPE),
    ("bias_act of a numpy array", lambda: PF.bias_act(np.zeros((2, 3)), None, "lrelu"), TypeError,
     "bias_act " + NOT_A_TENSOR.format("ndarray")),
    ("bias_act with a list as bias", lambda: PF.bias_act(randn(2, 3), [0.0, 1.0, 2.0]), TypeError,
     "bias_act bias " + NOT_A_TENSOR.format("list")),
    ("pixel_norm of a list", lambda: PF.pixel_norm([[1.0, 2.0]]), TypeError,
     "pixel_norm " + NOT_A_TENSOR.format("list")),
    ("minibatch_stddev of a numpy array", lambda: PF.minibatch_stddev(np.zeros((4, 3, 4, 4))), TypeError,
     "minibatch_stddev " + NOT_A_TENSOR.format("ndarray")),
    ("fade of numpy arrays", lambda: PF.fade(np.zeros(3), np.zeros(3), 0.5), TypeError,
     "fade " + NOT_A_TENSOR.format("ndarray")),
    ("equalized_conv2d with a numpy weight", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), np.zeros((2, 3, 3, 3))),
     TypeError, "equalized_conv2d weight " + NOT_A_TENSOR.format("ndarray")),
    ("gradient_penalty of a list", lambda: PF.gradient_penalty([[1.0]]), TypeError,
     "gradient_penalty " + NOT_A_TENSOR.format("list")),
    ("fade with alpha None", lambda: PF.fade(randn(2, 3), randn(2, 3), None), TypeError, ALPHA_TYPE.format("NoneType")),
    ("fade with alpha '0.5'", lambda: PF.fade(randn(2, 3), randn(2, 3), "0.5"), TypeError, ALPHA_TYPE.format("str")),
    ("Generator with alpha None", lambda: small_generator()(randn(2, 16), 8, None), TypeError,
     ALPHA_TYPE.format("NoneType")),
]


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in EDGE_ERRORS], ids=[row[0] for row in EDGE_ERRORS])
def test_edge_cases_raise_the_same_clear_error_on_every_backend(name, call, error, fragment):
    with pf.use_backend(name), pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


# (case, call): empty tensors; every backend must give the torch backend's result.
EMPTY = [
    ("bias_act", lambda: PF.bias_act(randn(0, 3, 4, 4), randn(3), "lrelu")),
    ("pixel_norm", lambda: PF.pixel_norm(randn(0, 3, 4, 4))),
    ("pixel_norm without channels", lambda: PF.pixel_norm(randn(2, 0, 4, 4))),
    ("fade", lambda: PF.fade(randn(0, 3, 4, 4), randn(0, 3, 4, 4), 0.5)),
    ("fade_upsample", lambda: PF.fade_upsample(randn(0, 3, 4, 4), randn(0, 3, 2, 2), torch.tensor(0.5))),
    ("fade_downsample", lambda: PF.fade_downsample(randn(0, 3, 4, 4), 0.5)),
    ("equalized_conv2d",
     lambda: PF.equalized_conv2d(randn(0, 3, 4, 4), randn(2, 3, 3, 3), randn(2), activation="lrelu")),
    ("equalized_conv2d upsample + pixel_norm",
     lambda: PF.equalized_conv2d(randn(0, 3, 4, 4), randn(2, 3, 3, 3), randn(2), activation="lrelu", pixel_norm=True,
                                 upsample=True)),
    ("equalized_linear", lambda: PF.equalized_linear(randn(0, 3), randn(2, 3), randn(2))),
    ("gradient_penalty", lambda: PF.gradient_penalty(randn(0, 3))),
]


# (case, call): a weight in another dtype than the input is used in the input's dtype on every backend (fp16,
# not bf16: the Triton interpreter computes bf16 products wrongly).
MIXED_WEIGHTS = [
    ("equalized_conv2d fp32 input, fp16 weight",
     lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 3, dtype=torch.float16), randn(2), 1.0)),
    ("equalized_conv2d fp16 input, fp32 weight",
     lambda: PF.equalized_conv2d(randn(1, 3, 4, 4, dtype=torch.float16), randn(2, 3, 3, 3), randn(2), 1.0)),
    ("equalized_linear fp32 input, fp16 weight",
     lambda: PF.equalized_linear(randn(2, 3), randn(4, 3, dtype=torch.float16), randn(4), 1.0)),
    ("equalized_linear fp16 input, fp32 weight",
     lambda: PF.equalized_linear(randn(2, 3, dtype=torch.float16), randn(4, 3), randn(4), 1.0)),
]


@pytest.mark.parametrize("call", [row[1] for row in EMPTY + MIXED_WEIGHTS],
                         ids=[row[0] for row in EMPTY + MIXED_WEIGHTS])
def test_empty_tensors_and_mixed_weights_give_the_torch_result_on_every_backend(call):
    results = []
    for name in ("torch", "triton"):
        torch.manual_seed(0)  # the same inputs for both
        with pf.use_backend(name):
            results.append(call())
    expected, got = results
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2, equal_nan=True)  # tf32, bf16 rounding
