"""minibatch_stddev on the triton backend vs the torch reference: official grouping and the whole-batch
variant, forward, gradient and the double backward of the gradient penalty."""
import pytest
import torch

from progan_fast import functional as F
from progan_fast import use_backend
from triton_parity import DEVICE, DTYPES, check_parity, leaves

# name: (shape, group_size, channels_last, view applied to x before the op)
CASES = {
    "groups_of_4": ((8, 5, 3, 6), 4, False, None),
    "channels_last": ((8, 13, 6, 8), 2, True, None),
    "one_group": ((4, 3, 1, 1), 4, False, None),
    "group_larger_than_batch": ((1, 1, 3, 3), 4, False, None),
    "whole_batch": ((4, 13, 3, 3), None, False, None),
    "whole_batch_channels_last": ((8, 3, 6, 6), None, True, None),
    "strided_view": ((4, 10, 8, 8), 2, False, lambda t: t[:, ::2, ::2]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_minibatch_stddev_matches_reference(dtype, case):
    shape, group_size, channels_last, view = CASES[case]
    x, = leaves(shape, dtype=dtype, channels_last=channels_last)

    def op(x):
        return F.minibatch_stddev(view(x) if view else x, group_size)

    check_parity("minibatch_stddev", op, [x], second_order=True)


def test_output_keeps_channels_last():
    x = torch.randn(4, 3, 4, 4, device=DEVICE).to(memory_format=torch.channels_last)
    with use_backend("triton"):
        out = F.minibatch_stddev(x, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
