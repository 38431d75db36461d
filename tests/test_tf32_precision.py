"""The triton conv rounds fp32 like torch's own convolutions: TF32 exactly when cuDNN's conv precision is "tf32",
whichever API set it (the legacy `cudnn.allow_tf32`, `cudnn.conv.fp32_precision`, or the `cudnn.fp32_precision`
and `torch.backends.fp32_precision` it inherits from), read without the legacy getter, which raises once the new
API has set conv and rnn apart. CUDA tensors are FakeTensors here, so this runs without a GPU."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from progan_fast.kernels.equalized_conv import dot_precision

CUDNN = torch.backends.cudnn


@pytest.fixture(autouse=True)
def restore_precision_settings():
    legacy = CUDNN.allow_tf32
    settings = [(holder, holder.fp32_precision) for holder in (torch.backends, CUDNN, CUDNN.conv, CUDNN.rnn)]
    yield
    CUDNN.allow_tf32 = legacy
    for holder, value in settings:
        holder.fp32_precision = value
    assert CUDNN.allow_tf32 == legacy  # readable again: the legacy and new settings agree


def precisions():
    """dot_precision of fp32 on CUDA, fp32 on CPU and fp16 on CUDA."""
    with FakeTensorMode():
        tensors = [torch.empty(3, 5, device=device, dtype=dtype)
                   for device, dtype in (("cuda", torch.float32), ("cpu", torch.float32), ("cuda", torch.float16))]
    return [dot_precision(t) for t in tensors]


@pytest.mark.parametrize("allowed", [True, False])
def test_legacy_switch(allowed):
    CUDNN.allow_tf32 = allowed
    assert precisions() == ["tf32" if allowed else "ieee", "ieee", "tf32"]


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_conv_precision(precision):
    CUDNN.conv.fp32_precision = precision
    assert precisions() == [precision, "ieee", "tf32"]


def test_the_legacy_getter_raises_after_the_new_api_sets_conv_apart():
    CUDNN.conv.fp32_precision = "ieee"  # rnn stays "tf32"
    with pytest.raises(RuntimeError, match="allow_tf32"):
        CUDNN.allow_tf32
    assert precisions() == ["ieee", "ieee", "tf32"]


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
@pytest.mark.parametrize("parent", ["cudnn", "generic"])
def test_conv_inherits_when_unset(parent, precision):
    CUDNN.conv.fp32_precision = "none"
    if parent == "generic":
        CUDNN.fp32_precision = "none"
    (CUDNN if parent == "cudnn" else torch.backends).fp32_precision = precision
    assert precisions() == [precision, "ieee", "tf32"]
