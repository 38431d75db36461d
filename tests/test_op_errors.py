"""The public ops on the torch and triton backends given bad input: wrong dtype, rank, device (meta tensors stand
in for a second device on CPU), kernel shape; and layouts (expand(), slices, transposes) that must give the
reference result."""
import os

import pytest
import torch

import progan_fast
from progan_fast import functional as PF


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def ints(*shape):
    return torch.randint(-3, 4, shape, dtype=torch.int32)


def on_meta(t):
    return t.to("meta")


NOT_FLOAT = "expects a floating-point tensor, got torch.int32; convert it with .float()"
TWO_DEVICES = "all tensors must be on the same device, got cpu and meta; move them with .to(device)"

# (case, call, exception, expected fragment): the same answer on the torch and the triton backend.
OP_ERRORS = [
    ("bias_act int", lambda: PF.bias_act(ints(2, 3, 4, 4), None, "lrelu"), TypeError, "bias_act " + NOT_FLOAT),
    ("bias_act 1-D x", lambda: PF.bias_act(randn(3), randn(3)), ValueError,
     "bias_act: dim 1 is out of range for x of shape (3,)"),
    ("bias_act bias shape", lambda: PF.bias_act(randn(2, 3, 4, 4), randn(4)), ValueError,
     "bias_act: bias must have shape [3] (size of dim 1 of x), got (4,)"),
    ("bias_act bias on another device", lambda: PF.bias_act(randn(2, 3, 4, 4), on_meta(randn(3))), ValueError,
     "bias_act: " + TWO_DEVICES),
    ("bias_act activation", lambda: PF.bias_act(randn(2, 3), None, "relu"), ValueError,
     "activation must be None, 'linear' or 'lrelu', got 'relu'"),
    ("pixel_norm int", lambda: PF.pixel_norm(ints(2, 3, 4, 4)), TypeError, "pixel_norm " + NOT_FLOAT),
    ("pixel_norm 1-D", lambda: PF.pixel_norm(randn(3)), ValueError,
     "pixel_norm expects [N, C, ...] (channels in dim 1), got shape (3,)"),
    ("minibatch_stddev int", lambda: PF.minibatch_stddev(ints(4, 3, 4, 4)), TypeError,
     "minibatch_stddev " + NOT_FLOAT),
    ("minibatch_stddev 3-D", lambda: PF.minibatch_stddev(randn(4, 3, 4)), ValueError,
     "minibatch_stddev expects a 4-D tensor [N, C, H, W], got shape (4, 3, 4)"),
    ("minibatch_stddev batch 6, group 4", lambda: PF.minibatch_stddev(randn(6, 3, 4, 4), 4), ValueError,
     "batch size 6 is not divisible by the group size 4; use a batch that is a multiple of 4, or another group_size"),
    ("minibatch_stddev group 0", lambda: PF.minibatch_stddev(randn(4, 3, 4, 4), 0), ValueError,
     "group_size must be >= 1 or None (whole batch), got 0"),
    ("fade int", lambda: PF.fade(ints(2, 3), ints(2, 3), 0.5), TypeError, "fade " + NOT_FLOAT),
    ("fade shapes", lambda: PF.fade(randn(2, 3), randn(3, 2), 0.5), ValueError,
     "fade: new and old must have the same shape, got (2, 3) and (3, 2)"),
    ("fade old on another device", lambda: PF.fade(randn(2, 3), on_meta(randn(2, 3)), 0.5), ValueError,
     "fade: " + TWO_DEVICES),
    ("fade alpha 1.5", lambda: PF.fade(randn(2, 3), randn(2, 3), 1.5), ValueError,
     "alpha must lie in [0, 1] (0 = old branch only, 1 = new branch only), got 1.5"),
    ("fade alpha of shape (2,)", lambda: PF.fade(randn(2, 3), randn(2, 3), torch.rand(2)), ValueError,
     "alpha must be a float or a 0-dim tensor, got a tensor of shape (2,)"),
    ("fade_upsample 3-D", lambda: PF.fade_upsample(randn(3, 4, 4), randn(3, 2, 2), 0.5), ValueError,
     "fade_upsample expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("fade_upsample low shape", lambda: PF.fade_upsample(randn(1, 3, 4, 4), randn(1, 3, 4, 4), 0.5), ValueError,
     "fade_upsample: low must have shape (1, 3, 2, 2) for high of shape (1, 3, 4, 4) (even H and W)"),
    ("fade_upsample int", lambda: PF.fade_upsample(ints(1, 1, 4, 4), ints(1, 1, 2, 2), 0.5), TypeError,
     "fade_upsample " + NOT_FLOAT),
    ("fade_upsample low on another device",
     lambda: PF.fade_upsample(randn(1, 3, 4, 4), on_meta(randn(1, 3, 2, 2)), 0.5), ValueError,
     "fade_upsample: " + TWO_DEVICES),
    ("fade_downsample odd size", lambda: PF.fade_downsample(randn(1, 3, 5, 4), 0.5), ValueError,
     "fade_downsample needs even H and W, got shape (1, 3, 5, 4)"),
    ("fade_downsample int", lambda: PF.fade_downsample(ints(1, 1, 4, 4), 0.5), TypeError,
     "fade_downsample " + NOT_FLOAT),
    ("equalized_conv2d int input", lambda: PF.equalized_conv2d(ints(1, 3, 4, 4), randn(2, 3, 3, 3)), TypeError,
     "equalized_conv2d " + NOT_FLOAT),
    ("equalized_conv2d int weight", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), ints(2, 3, 3, 3)), TypeError,
     "equalized_conv2d weight " + NOT_FLOAT),
    ("equalized_conv2d 3-D input", lambda: PF.equalized_conv2d(randn(3, 4, 4), randn(2, 3, 3, 3)), ValueError,
     "equalized_conv2d expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("equalized_conv2d 2-D weight", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3)), ValueError,
     "equalized_conv2d weight expects a 4-D tensor [out_channels, in_channels, k, k], got shape (2, 3)"),
    ("equalized_conv2d non-square kernel", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 1)),
     ValueError, "equalized_conv2d needs a square kernel, got weight shape (2, 3, 3, 1)"),
    ("equalized_conv2d channels", lambda: PF.equalized_conv2d(randn(1, 4, 4, 4), randn(2, 3, 3, 3)), ValueError,
     "equalized_conv2d: input has 4 channels but the weight expects 3"),
    ("equalized_conv2d even kernel, same padding", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 2, 2)),
     ValueError, "padding=None ('same') needs an odd kernel size, got 2; pass padding explicitly"),
    ("equalized_conv2d bias shape", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 3), randn(3)),
     ValueError, "equalized_conv2d: bias must have shape [2], got (3,)"),
    ("equalized_conv2d weight on another device",
     lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), on_meta(randn(2, 3, 3, 3))), ValueError,
     "equalized_conv2d: " + TWO_DEVICES),
    ("equalized_linear int input", lambda: PF.equalized_linear(ints(2, 3), randn(4, 3)), TypeError,
     "equalized_linear " + NOT_FLOAT),
    ("equalized_linear int weight", lambda: PF.equalized_linear(randn(2, 3), ints(4, 3)), TypeError,
     "equalized_linear weight " + NOT_FLOAT),
    ("equalized_linear 3-D weight", lambda: PF.equalized_linear(randn(2, 3), randn(4, 3, 1)), ValueError,
     "equalized_linear: input of shape (2, 3) does not match weight of shape (4, 3, 1); the last input dim must "
     "equal in_features"),
    ("equalized_linear bias on another device",
     lambda: PF.equalized_linear(randn(2, 3), randn(4, 3), on_meta(randn(4))), ValueError,
     "equalized_linear: " + TWO_DEVICES),
    ("gradient_penalty int", lambda: PF.gradient_penalty(ints(2, 3)), TypeError, "gradient_penalty " + NOT_FLOAT),
    ("gradient_penalty 1-D", lambda: PF.gradient_penalty(randn(3)), ValueError,
     "gradient_penalty expects a per-sample gradient [N, ...], got shape (3,)"),
]


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in OP_ERRORS], ids=[row[0] for row in OP_ERRORS])
def test_op_errors_name_the_problem_and_the_fix(name, call, error, fragment):
    with progan_fast.use_backend(name), pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


UNSUPPORTED_DTYPE = "(triton backend) supports float32, float16 and bfloat16 tensors, got torch.float64; convert " \
                    "the input, or use the torch backend"
META = "Triton kernels run on CUDA tensors, got a meta tensor; move the tensors to a GPU"

# (case, call, exception, expected fragment): triton backend only; the torch backend runs these (fp64: the
# reference in double precision; meta tensors: shapes only).
TRITON_ERRORS = [
    ("bias_act fp64", lambda: PF.bias_act(randn(2, 3, dtype=torch.float64), None, "lrelu"), TypeError,
     "bias_act " + UNSUPPORTED_DTYPE),
    ("pixel_norm fp64", lambda: PF.pixel_norm(randn(2, 3, 4, 4, dtype=torch.float64)), TypeError,
     "pixel_norm " + UNSUPPORTED_DTYPE),
    ("minibatch_stddev fp64", lambda: PF.minibatch_stddev(randn(4, 3, 4, 4, dtype=torch.float64)), TypeError,
     "minibatch_stddev " + UNSUPPORTED_DTYPE),
    ("fade fp64", lambda: PF.fade(randn(2, 3, dtype=torch.float64), randn(2, 3, dtype=torch.float64), 0.5),
     TypeError, "fade " + UNSUPPORTED_DTYPE),
    ("fade_upsample fp64", lambda: PF.fade_upsample(randn(1, 3, 4, 4, dtype=torch.float64),
                                                    randn(1, 3, 2, 2, dtype=torch.float64), 0.5),
     TypeError, "fade_upsample " + UNSUPPORTED_DTYPE),
    ("fade_downsample fp64", lambda: PF.fade_downsample(randn(1, 3, 4, 4, dtype=torch.float64), 0.5), TypeError,
     "fade_downsample " + UNSUPPORTED_DTYPE),
    ("fade alpha requiring grad", lambda: PF.fade(randn(2, 3), randn(2, 3), torch.tensor(0.5, requires_grad=True)),
     ValueError, "fade (triton backend) does not compute a gradient for alpha; pass alpha.detach()"),
    ("bias_act negative slope", lambda: PF.bias_act(randn(2, 3), randn(3), "lrelu", -0.1), ValueError,
     "which needs negative_slope >= 0, got -0.1; use the torch backend"),
    ("equalized_conv2d negative padding", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 3),
                                                                      padding=-1),
     ValueError, "equalized_conv2d: padding must be >= 0, got -1"),
    ("pixel_norm on meta", lambda: PF.pixel_norm(on_meta(randn(2, 3, 4, 4))), progan_fast.BackendUnavailableError,
     META),
    ("equalized_conv2d on meta", lambda: PF.equalized_conv2d(on_meta(randn(1, 3, 4, 4)), on_meta(randn(2, 3, 3, 3))),
     progan_fast.BackendUnavailableError, META),
]


@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in TRITON_ERRORS],
                         ids=[row[0] for row in TRITON_ERRORS])
def test_triton_backend_errors_name_the_problem_and_the_fix(call, error, fragment):
    with progan_fast.use_backend("triton"), pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


def test_meta_tensors_give_shapes_on_the_torch_backend():
    with progan_fast.use_backend("torch"):
        y = PF.equalized_conv2d(on_meta(randn(2, 3, 4, 4)), on_meta(randn(5, 3, 3, 3)), on_meta(randn(5)),
                                activation="lrelu", pixel_norm=True, upsample=True)
    assert y.device.type == "meta" and y.shape == (2, 5, 8, 8)


def expanded(*shape, dim):
    """A tensor of `shape` whose dim `dim` is an expand() (stride 0: every element there overlaps)."""
    base = list(shape)
    base[dim] = 1
    return randn(*base).expand(*shape)


def strided(*shape):
    """A non-dense view (every other element of the last dim)."""
    return randn(*shape[:-1], 2 * shape[-1])[..., ::2]


def transposed(*shape):
    """A dense but permuted view (H and W swapped in memory)."""
    return randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)


def channels_last(*shape):
    return randn(*shape).contiguous(memory_format=torch.channels_last)


# (case, op, arguments with at least one unusual layout or dtype): the result must equal the torch reference on
# contiguous copies. Unusual layouts are copied or addressed through their strides; fp64 runs the reference on
# equalized_conv2d / equalized_linear (documented).
FALLBACKS = [
    ("bias_act expanded x", PF.bias_act, lambda: (expanded(2, 3, 4, 4, dim=3), randn(3), "lrelu")),
    ("bias_act strided x, strided bias", PF.bias_act, lambda: (strided(2, 3, 4, 5), strided(3), "lrelu")),
    ("bias_act channels_last", PF.bias_act, lambda: (channels_last(2, 3, 4, 5), randn(3), "lrelu")),
    ("pixel_norm expanded", PF.pixel_norm, lambda: (expanded(2, 3, 4, 4, dim=0),)),
    ("pixel_norm strided", PF.pixel_norm, lambda: (strided(2, 3, 4, 5),)),
    ("minibatch_stddev expanded W", PF.minibatch_stddev, lambda: (expanded(4, 3, 4, 4, dim=3), 2)),
    ("minibatch_stddev strided", PF.minibatch_stddev, lambda: (strided(4, 3, 4, 5), 4)),
    ("fade expanded new, strided old", PF.fade, lambda: (expanded(2, 3, 4, 5, dim=1), strided(2, 3, 4, 5), 0.3)),
    ("fade_upsample transposed high, expanded low", PF.fade_upsample,
     lambda: (transposed(2, 3, 4, 6), expanded(2, 3, 2, 3, dim=2), 0.7)),
    ("fade_downsample strided", PF.fade_downsample, lambda: (strided(2, 3, 4, 6), 0.4)),
    ("equalized_conv2d expanded input, strided bias", PF.equalized_conv2d,
     lambda: (expanded(2, 3, 5, 5, dim=0), randn(4, 3, 3, 3), strided(4), 2 ** 0.5, None, "lrelu")),
    ("equalized_conv2d transposed weight", PF.equalized_conv2d,
     lambda: (channels_last(2, 3, 5, 5), transposed(4, 3, 3, 3), randn(4), 1.0, 1, None, 0.2, True)),
    ("equalized_conv2d fp64", PF.equalized_conv2d,
     lambda: (randn(2, 3, 4, 4, dtype=torch.float64), randn(4, 3, 3, 3, dtype=torch.float64),
              randn(4, dtype=torch.float64), 2 ** 0.5, None, "lrelu", 0.2, True, True)),
    ("equalized_linear expanded x, transposed weight", PF.equalized_linear,
     lambda: (expanded(3, 5, dim=0), randn(5, 4).t(), randn(4), 2 ** 0.5, "lrelu")),
    ("equalized_linear fp64", PF.equalized_linear,
     lambda: (randn(3, 5, dtype=torch.float64), randn(4, 5, dtype=torch.float64), randn(4, dtype=torch.float64),
              2 ** 0.5, "lrelu")),
    ("gradient_penalty expanded", PF.gradient_penalty, lambda: (expanded(4, 3, 2, 2, dim=2),)),
    ("gradient_penalty fp64", PF.gradient_penalty, lambda: (randn(4, 3, 2, 2, dtype=torch.float64),)),
]


def contiguous_copies(args):
    return [a.clone(memory_format=torch.contiguous_format) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("op, make_args", [row[1:] for row in FALLBACKS], ids=[row[0] for row in FALLBACKS])
def test_unusual_layouts_and_dtypes_give_the_reference_result(name, op, make_args):
    args = make_args()
    inputs = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    unusual = [a for a in args if isinstance(a, torch.Tensor) and (not a.is_contiguous() or a.dtype == torch.float64)]
    assert unusual, "the row must hold an unusual input"
    with progan_fast.use_backend(name):
        got = op(*args)
    with progan_fast.use_backend("torch"):
        expected = op(*contiguous_copies(args))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tolerance = dict(rtol=1e-12, atol=1e-12) if got.dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got, expected, **tolerance)
    for before, after in zip(inputs, [a for a in args if isinstance(a, torch.Tensor)]):
        torch.testing.assert_close(after, before, rtol=0, atol=0)  # the inputs are not changed in place


def test_catalogue_covers_every_public_op():
    covered = {row[0].split()[0] for row in OP_ERRORS}
    assert {"bias_act", "pixel_norm", "minibatch_stddev", "fade", "fade_upsample", "fade_downsample",
            "equalized_conv2d", "equalized_linear", "gradient_penalty"} <= covered
    assert covered == {op.__name__ for _, op, _ in FALLBACKS}
    assert os.environ.get("TRITON_INTERPRET") or torch.cuda.is_available()
