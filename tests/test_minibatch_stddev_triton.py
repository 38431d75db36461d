"""minibatch_stddev on the triton backend vs the torch reference: official grouping and the whole-batch
variant, forward, gradient and the double backward of the gradient penalty."""
import pytest
import torch

from progan_fast import functional as F
from progan_fast import use_backend
from progan_fast.layout import is_channels_last
from progan_fast.testing import relative_error
from triton_parity import DEVICE, DTYPES, TOLERANCE, check_parity, leaves

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


@pytest.mark.parametrize("channels", [3, 15, 16, 37])
def test_output_keeps_channels_last_with_aligned_pixels(channels):
    """channels_last in, channels_last out, each pixel's C + 1 channels starting at a multiple of 16 elements (the
    next conv's loads are then 16-byte vectors: D's last conv has 513 input channels); NCHW stays NCHW."""
    x = torch.randn(4, channels, 4, 4, device=DEVICE)
    with use_backend("triton"):
        out = F.minibatch_stddev(x.to(memory_format=torch.channels_last), 2)
        assert F.minibatch_stddev(x, 2).is_contiguous()
    assert is_channels_last(out) and out.stride(1) == 1
    assert out.stride(3) == -(-(channels + 1) // 16) * 16 and out.stride(3) % 16 == 0
    assert out.stride(2) == 4 * out.stride(3) and out.stride(0) == 4 * out.stride(2)
    with use_backend("torch"):
        expected = F.minibatch_stddev(x, 2)
    assert relative_error(out, expected) <= TOLERANCE[torch.float32]


def test_chunk_count_is_on_grid_axis_0(monkeypatch):
    """CUDA caps grid axes 1 and 2 at 65535 programs; the chunks of C*H*W grow with the image (over 65535 beyond
    ~67M values per sample), the groups only with the batch: the chunks must be on axis 0, forward and backward."""
    from progan_fast.kernels import minibatch_stddev as backend

    grids = {}

    class RecordGrid:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            grids[self.name] = grid
            return self.kernel[grid]

    for name in ("_mbstd_fwd_kernel", "_mbstd_bwd_kernel"):
        monkeypatch.setattr(backend, name, RecordGrid(name, getattr(backend, name)))
    x = torch.randn(8, 37, 13, 11, device=DEVICE, requires_grad=True)
    with use_backend("triton"):
        F.minibatch_stddev(x, group_size=4).square().sum().backward()
    _, _, num_chunks = backend._launch_shape(4, 37 * 13 * 11)
    assert num_chunks > 2  # more chunks than groups: a swap of the axes would show
    assert grids == {"_mbstd_fwd_kernel": (num_chunks, 2), "_mbstd_bwd_kernel": (num_chunks, 2)}
