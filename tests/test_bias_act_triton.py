"""bias_act on the triton backend vs the torch reference: forward, gradients, and the double backward the gradient
penalty takes through D."""
import pytest
import torch

from progan_fast import functional as F
from progan_fast import use_backend
from triton_parity import DEVICE, DTYPES, check_parity, leaves

# name: (shape of x, dim of the bias, channels_last, view applied to x before the op)
CASES = {
    "nchw": ((4, 3, 6, 8), 1, False, None),
    "channels_last": ((8, 13, 3, 3), 1, True, None),
    "one_pixel": ((1, 5, 1, 1), 1, False, None),
    "one_channel": ((4, 1, 3, 1), 1, False, None),
    "features_last_dim": ((8, 13), -1, False, None),
    "strided_view": ((4, 5, 6, 8), 1, False, lambda t: t[:, :, ::2, 1:]),
}


@pytest.mark.parametrize("activation", ["lrelu", None])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_matches_reference(dtype, case, activation):
    shape, dim, channels_last, view = CASES[case]
    x, bias = leaves(shape, (shape[dim],), dtype=dtype, channels_last=channels_last)

    def op(x, bias):
        return F.bias_act(view(x) if view else x, bias, activation, negative_slope=0.2, dim=dim)

    check_parity("bias_act", op, [x, bias], second_order=True)


def test_lrelu_without_bias_matches_reference():
    x, = leaves((4, 3, 3, 6))
    check_parity("bias_act", lambda x: F.bias_act(x, None, "lrelu", negative_slope=0.1), [x], second_order=True)


def test_identity_returns_input():
    x = torch.randn(2, 3, device=DEVICE)
    with use_backend("triton"):
        assert F.bias_act(x) is x


def test_unsupported_dtype_is_rejected():
    x = torch.randn(2, 3, device=DEVICE, dtype=torch.float64)
    with use_backend("triton"), pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        F.bias_act(x, torch.zeros(3, device=DEVICE, dtype=torch.float64), "lrelu")


def test_negative_slope_is_rejected():
    x = torch.randn(2, 3, device=DEVICE)
    with use_backend("triton"), pytest.raises(ValueError, match="negative_slope >= 0"):
        F.bias_act(x, None, "lrelu", negative_slope=-0.1)
