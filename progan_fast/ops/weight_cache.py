"""Weights prepared for a kernel (scaled, cast, laid out for it), kept while the weight is unchanged.

A layer prepares its weight the same way at every call, and a training step calls it several times with the same
weight: D runs on reals, fakes and the penalty's mixed images, G in the D step and in the G step, until an
optimizer updates them. `prepared_weight` builds the prepared tensor once per weight and slot and hands it out
again while the weight is unchanged, which means: the same tensor object, data pointer, shape, strides, dtype and
autograd version counter. Every in-place write autograd sees bumps that counter (optimizer updates,
`load_state_dict`, `with torch.no_grad(): w.mul_(2)`); fused optimizers (`Adam(fused=True)`) write without
bumping it, so each `torch.optim` step also forgets the parameters it updated. Writes that autograd does not see
either (through `.data`, torch.distributed collectives, numpy views) are not seen here: call
`forget_prepared_weights()` after them.

Memory: one prepared tensor per weight and slot (a new version, dtype or key replaces it), dropped with the
weight (weak keys). Nothing is cached, the weight is prepared at each call as without this module, for tensor
subclasses (FakeTensor and FunctionalTensor: torch.compile tracing), while dynamo compiles, during CUDA graph
capture (the preparation must be captured) and in inference mode (its tensors cannot be saved for a later
backward).
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Dict, Hashable, Iterable, Optional, Tuple

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
# id(weight) -> (weak reference to the weight, {slot: (state of the weight, key, prepared tensor)})
_entries: Dict[int, Tuple[weakref.ref, Dict[str, tuple]]] = {}


def _cacheable(weight: torch.Tensor) -> bool:
    # is_compiling first: dynamo cannot trace the inference-mode checks.
    return (not torch.compiler.is_compiling() and type(weight) in _PLAIN_TENSOR_TYPES
            and not weight.is_inference() and not torch.is_inference_mode_enabled()
            and not (weight.is_cuda and torch.cuda.is_current_stream_capturing()))


def _state(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight.shape, weight.stride(), weight.dtype, weight.device, weight._version


def _slots(weight: torch.Tensor) -> Dict[str, tuple]:
    key = id(weight)
    entry = _entries.get(key)
    if entry is None or entry[0]() is not weight:
        entry = _entries[key] = (weakref.ref(weight, functools.partial(_drop_entry, key)), {})
    return entry[1]


def _drop_entry(key: int, reference: weakref.ref) -> None:
    """Called when a weight is freed: drop its entry (unless its id names a newer weight already)."""
    if _entries.get(key, (None,))[0] is reference:
        del _entries[key]


def prepared_weight(weight: torch.Tensor, slot: str, key: Hashable,
                    build: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """build(weight), made without autograd history and kept under (weight, slot) for the next call with the same
    key; for use where no gradient flows through the result (inside a custom op's forward)."""
    if not _cacheable(weight):
        with torch.no_grad():
            return build(weight)
    slots, state = _slots(weight), _state(weight)
    cached = slots.get(slot)
    if cached is not None and cached[0] == state and cached[1] == key:
        return cached[2]
    with torch.no_grad():
        result = build(weight)
    slots[slot] = (state, key, result)
    return result


class _Prepared(torch.autograd.Function):
    """The cached tensor as a function of the weight: its gradient goes back through `adjoint`."""

    @staticmethod
    def forward(ctx, weight, prepared, adjoint):
        ctx.adjoint = adjoint
        return prepared.detach()  # a new tensor object: autograd attaches this node to it, not to the cached one

    @staticmethod
    def backward(ctx, grad):
        return ctx.adjoint(grad), None, None


def differentiable_prepared_weight(weight: torch.Tensor, slot: str, key: Hashable,
                                   build: Callable[[torch.Tensor], torch.Tensor],
                                   adjoint: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`prepared_weight` for a linear `build` whose result autograd differentiates (a convolution's weight
    operand, a backward that the gradient penalty differentiates again); adjoint(grad) is build's vector-Jacobian
    product, made of differentiable ops."""
    if not _cacheable(weight):
        return build(weight)
    prepared = prepared_weight(weight, slot, key, build)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return prepared
    return _Prepared.apply(weight, prepared, adjoint)


def forget_prepared_weights(weights: Optional[Iterable[torch.Tensor]] = None) -> None:
    """Drop the prepared tensors of `weights` (default: all), e.g. after writing them through `.data`."""
    if weights is None:
        _entries.clear()
        return
    for weight in weights:
        entry = _entries.get(id(weight))
        if entry is not None and entry[0]() is weight:
            del _entries[id(weight)]


def _forget_stepped_parameters(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    forget_prepared_weights(p for group in optimizer.param_groups for p in group["params"])


register_optimizer_step_post_hook(_forget_stepped_parameters)
