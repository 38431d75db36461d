"""Input checks shared by the ops: each error names the problem and how to fix it."""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

ACTIVATIONS = (None, "linear", "lrelu")
Alpha = Union[float, torch.Tensor]


def check_activation(activation: Optional[str]) -> Optional[str]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'linear' or 'lrelu', got {activation!r}")
    return None if activation == "linear" else activation


def check_sign_mask_slope(op: str, backend: str, activation: Optional[str], negative_slope: float) -> None:
    """The accelerated backwards read the LeakyReLU mask from the sign of the saved output, which needs a
    non-negative slope."""
    if activation == "lrelu" and negative_slope < 0:
        raise ValueError(f"{op} ({backend} backend) takes the LeakyReLU gradient from the sign of the output, "
                         f"which needs negative_slope >= 0, got {negative_slope}; use the torch backend")


def check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}; convert it with torch.as_tensor()")


def check_rank(name: str, x: torch.Tensor, rank: int, layout: str) -> None:
    check_tensor(name, x)
    if x.dim() != rank:
        raise ValueError(f"{name} expects a {rank}-D tensor {layout}, got shape {tuple(x.shape)}")


def check_floating(name: str, x: torch.Tensor) -> None:
    check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}; convert it with .float()")


def check_same_dtype(name: str, *tensors: Optional[torch.Tensor]) -> None:
    """All tensor arguments (None entries skipped) in one dtype: torch would raise deep inside for some ops and
    promote for others, while the kernels take one storage type."""
    present = [t for t in tensors if t is not None]
    for t in present[1:]:
        if t.dtype != present[0].dtype:
            raise TypeError(f"{name}: all tensors must have one dtype, got {present[0].dtype} and {t.dtype}; "
                            f"convert one with .to(other.dtype)")


def check_fan_in(name: str, weight: torch.Tensor) -> None:
    """The equalized scale divides by the fan-in (input channels x kernel area): it must not be 0."""
    if weight[0].numel() == 0:
        raise ValueError(f"{name}: the weight of shape {tuple(weight.shape)} has no inputs (in_channels x kernel "
                         f"area = 0); give at least one input channel")


def check_layer_size(layer: str, name: str, value, minimum: int) -> None:
    """A size argument of a layer's constructor: a whole number >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{layer}: {name} must be a whole number >= {minimum}, got {value!r}")


def check_same_device(name: str, *tensors: Optional[torch.Tensor]) -> None:
    """All tensor arguments on one device (None entries, an absent bias, are skipped): a mix would otherwise
    fail deep inside torch, or on the meta device silently return an uninitialised result."""
    present = [t for t in tensors if t is not None]
    for t in present[1:]:
        if t.device != present[0].device:
            raise ValueError(f"{name}: all tensors must be on the same device, got {present[0].device} and {t.device}; "
                             "move them with .to(device)")


def check_alpha(alpha: Alpha) -> Alpha:
    """alpha is a float in [0, 1] or a 0-dim tensor (not range-checked: that would read it back to the host)."""
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 0:
            raise ValueError(f"alpha must be a float or a 0-dim tensor, got a tensor of shape {tuple(alpha.shape)}")
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float in [0, 1] or a 0-dim tensor, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0 = old branch only, 1 = new branch only), got {alpha}")
    return alpha


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are computed in fp32 at least (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)
