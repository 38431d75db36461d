"""Shared checks of the triton backend against the torch backend (the op references): forward, first-order
gradients and, for the ops the discriminator's gradient penalty differentiates twice, second-order gradients."""
from typing import Callable, Sequence

import torch

from progan_fast import use_backend
from progan_fast.testing import relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter runs fp16 and bf16 too (numpy emulation), so every dtype is covered on CPU as well.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# bf16 keeps 8 mantissa bits: the torch reference itself is ~1e-2 away from an fp64 computation there.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# Second-order values are products of several rounded terms: a looser bound for the half types.
SECOND_ORDER_TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}


def leaves(*shapes: Sequence[int], dtype: torch.dtype = torch.float32, channels_last: bool = False):
    """Random leaf tensors that require grad (never zeros)."""
    out = []
    for shape in shapes:
        t = torch.randn(*shape, device=DEVICE).to(dtype)
        if channels_last and t.dim() == 4:
            t = t.to(memory_format=torch.channels_last)
        out.append(t.requires_grad_())
    return out


def _evaluate(backend: str, fn: Callable, inputs: Sequence[torch.Tensor], second_order: bool):
    with use_backend(backend):
        y = fn(*inputs)
        generator = torch.Generator(device=DEVICE).manual_seed(1)
        weight = torch.randn(y.shape, device=DEVICE, generator=generator)
        # A square makes the upstream gradient depend on the inputs, so the double backward is exercised.
        loss = (weight * y.float().square()).sum()
        grads = torch.autograd.grad(loss, inputs, create_graph=second_order)
        results = [y, *grads]
        if second_order:
            penalty = sum((g.float().square() * (i + 1)).sum() for i, g in enumerate(grads))
            results += torch.autograd.grad(penalty, inputs, allow_unused=True, materialize_grads=True)
    return results


def check_parity(label: str, fn: Callable, inputs: Sequence[torch.Tensor], second_order: bool = False) -> None:
    """fn(*inputs) on the triton backend vs the torch backend, within the dtype's relative tolerance."""
    dtype = inputs[0].dtype
    expected = _evaluate("torch", fn, inputs, second_order)
    actual = _evaluate("triton", fn, inputs, second_order)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (index, a.shape, e.shape, a.dtype, e.dtype)
        error = relative_error(a, e)
        tolerance = (SECOND_ORDER_TOLERANCE if index > len(inputs) else TOLERANCE)[dtype]
        assert error <= tolerance, f"{label}, result {index} (0 = output, then gradients): relative error {error:.3g}"
