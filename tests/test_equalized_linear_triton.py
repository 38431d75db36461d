"""equalized_linear on the triton backend (cuBLAS matmul + the Triton bias_act) vs the torch reference: forward,
gradients and the double backward the gradient penalty takes through D's dense layers."""
import pytest

from progan_fast import functional as F
from triton_parity import DTYPES, check_parity, leaves


@pytest.mark.parametrize("activation", ["lrelu", None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_equalized_linear_matches_reference(dtype, activation):
    x, weight, bias = leaves((4, 13), (5, 13), (5,), dtype=dtype)
    check_parity("equalized_linear", lambda x, w, b: F.equalized_linear(x, w, b, activation=activation),
                 [x, weight, bias], second_order=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_equalized_linear_on_batched_features_without_bias(dtype):
    x, weight = leaves((2, 3, 7), (6, 7), dtype=dtype)
    check_parity("equalized_linear", lambda x, w: F.equalized_linear(x, w, None, gain=1.0, activation="lrelu"),
                 [x, weight], second_order=True)
