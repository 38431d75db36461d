"""pixel_norm on the triton backend vs the torch reference: forward and input gradient (first order: the
generator, the only user of pixel_norm, needs no double backward)."""
import pytest

from progan_fast import functional as F
from triton_parity import DTYPES, check_parity, leaves

# name: (shape, channels_last, view applied to x before the op)
CASES = {
    "nchw": ((4, 5, 3, 6), False, None),
    "channels_last": ((8, 13, 6, 8), True, None),
    "one_pixel": ((1, 5, 1, 1), False, None),
    "latent": ((8, 13), False, None),
    "rank3": ((2, 3, 7), False, None),
    "strided_view": ((4, 6, 8, 8), False, lambda t: t[:, 1:, ::2]),
    "wide": ((2, 200, 2, 2), True, None),  # more channels than one channel block
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pixel_norm_matches_reference(dtype, case):
    shape, channels_last, view = CASES[case]
    x, = leaves(shape, dtype=dtype, channels_last=channels_last)
    check_parity("pixel_norm", lambda x: F.pixel_norm(view(x) if view else x), [x])


# With one channel y = x / sqrt(x^2 + eps) is sign(x) and its gradient vanishes unless eps matters.
@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (2, 1, 3, 3)])
def test_pixel_norm_eps_is_used(shape):
    x, = leaves(shape)
    with_small_values = lambda x: F.pixel_norm(x * 1e-3, eps=1e-4)  # noqa: E731  eps dominates mean(x^2)
    check_parity("pixel_norm", with_small_values, [x])
