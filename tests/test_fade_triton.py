"""fade, fade_upsample and fade_downsample on the triton backend vs the torch reference: forward, gradients
and the double backward (D blends feature maps inside the gradient penalty), for float and tensor alpha."""
import pytest
import torch

from progan_fast import functional as F
from progan_fast import use_backend
from progan_fast.ops.fade import fade_reference
from triton_parity import DEVICE, check_parity, leaves

ALPHAS = [0.0, 1.0, 0.37, "tensor"]
# name: (shape of the full-resolution map, channels_last, view applied to every input before the op)
LAYOUTS = {
    "nchw": ((4, 3, 6, 8), False, None),
    "channels_last": ((1, 5, 2, 2), True, None),
    "one_channel": ((8, 1, 6, 6), False, None),
    "strided_view": ((8, 13, 6, 8), False, lambda t: t[:, ::3]),
}


def as_alpha(alpha):
    return torch.tensor(0.37, device=DEVICE) if alpha == "tensor" else alpha


def blend(op_name, alpha, view):
    view = view or (lambda t: t)
    alpha = as_alpha(alpha)
    return {
        "fade": lambda new, old: F.fade(view(new), view(old), alpha),
        "fade_upsample": lambda high, low: F.fade_upsample(view(high), view(low), alpha),
        "fade_downsample": lambda x: F.fade_downsample(view(x), alpha),
    }[op_name]


def blend_inputs(op_name, shape, dtype, channels_last):
    n, c, h, w = shape
    shapes = {"fade": [shape, shape], "fade_upsample": [shape, (n, c, h // 2, w // 2)], "fade_downsample": [shape]}
    return leaves(*shapes[op_name], dtype=dtype, channels_last=channels_last)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op_name", ["fade", "fade_upsample", "fade_downsample"])
def test_blend_matches_reference(op_name, layout, alpha):
    shape, channels_last, view = LAYOUTS[layout]
    inputs = blend_inputs(op_name, shape, torch.float32, channels_last)
    check_parity(op_name, blend(op_name, alpha, view), inputs, second_order=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op_name", ["fade", "fade_upsample", "fade_downsample"])
def test_blend_half_precision(op_name, dtype):
    inputs = blend_inputs(op_name, (4, 3, 6, 8), dtype, channels_last=False)
    check_parity(op_name, blend(op_name, 0.37, None), inputs, second_order=True)


def test_tensor_alpha_is_read_on_the_device_at_each_call():
    new, old = torch.randn(2, 3, 4, 4, device=DEVICE), torch.randn(2, 3, 4, 4, device=DEVICE)
    alpha = torch.tensor(0.25, device=DEVICE)
    with use_backend("triton"):
        first = F.fade(new, old, alpha)
        alpha.fill_(0.75)
        second = F.fade(new, old, alpha)
    torch.testing.assert_close(first, fade_reference(new, old, 0.25))
    torch.testing.assert_close(second, fade_reference(new, old, 0.75))


def test_alpha_requiring_grad_is_rejected():
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    alpha = torch.tensor(0.5, device=DEVICE, requires_grad=True)
    with use_backend("triton"), pytest.raises(ValueError, match="alpha.detach"):
        F.fade_downsample(x, alpha)


def test_mixed_dtypes_are_rejected():
    high = torch.randn(2, 3, 4, 4, device=DEVICE)
    low = torch.randn(2, 3, 2, 2, device=DEVICE, dtype=torch.float16)
    with use_backend("triton"), pytest.raises(TypeError, match="one dtype"):
        F.fade_upsample(high, low, 0.5)
