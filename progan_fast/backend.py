"""The backend switch and the op registry.

The switch: ``set_backend(name)``, the ``use_backend(name)`` context manager, or ``$PROGAN_FAST_BACKEND`` (read
when nothing was set in code); a plain module global, so torch.compile guards on it. The registry: every op of
`progan_fast.ops` is an `Op` whose torch reference is always there; `progan_fast.kernels` and `progan_fast.csrc`
register the op's triton and cuda implementations on it. What each backend runs is in the README ("Backends").
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import Callable, Dict, Iterator, Optional

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")
# Storage dtypes of the triton and cuda kernels (their math is fp32); other dtypes run the torch reference or raise.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ENV_VAR = "PROGAN_FAST_BACKEND"
# The accelerated backends, in the order in which `auto` tries them for an op.
ACCELERATED = ("triton", "cuda")

# Not a ContextVar: torch.compile guards on a module global, so switching backends recompiles.
_selected: Optional[str] = None
_warned_fallback = False


class BackendUnavailableError(RuntimeError):
    """A backend was asked for explicitly but cannot run here."""


def _check_name(name: str, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown progan_fast backend {name!r} (from {source}); choose one of {', '.join(BACKENDS)}")
    return name.lower()


def get_backend() -> str:
    """The backend in force: the one set in code, else ``$PROGAN_FAST_BACKEND``, else ``auto``."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_VAR)
    return _check_name(env, f"the environment variable {ENV_VAR}") if env else "auto"


def set_backend(name: str) -> None:
    """Select the backend for all ops from now on (``auto``, ``torch``, ``triton`` or ``cuda``)."""
    global _selected
    _selected = _check_name(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select a backend inside a ``with`` block and restore the previous choice after it."""
    global _selected
    previous, _selected = _selected, _check_name(name, "use_backend")
    try:
        yield
    finally:
        _selected = previous


# ---------------------------------------------------------------------------------------------
# Availability: None when the backend can run on `device`, else the reason it cannot.

_CUDA_EXTENSION_PROBE: Optional[Callable[[], Optional[str]]] = None


def register_cuda_extension_probe(probe: Callable[[], Optional[str]]) -> None:
    """Install the function that tells whether the CUDA extension can be built and loaded."""
    global _CUDA_EXTENSION_PROBE
    _CUDA_EXTENSION_PROBE = probe


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_unavailable(device: torch.device) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreter_enabled()):
        return None
    return (f"Triton kernels run on CUDA tensors, got a {device.type} tensor; move the tensors to a GPU, "
            "or set TRITON_INTERPRET=1 (before importing progan_fast) to run the kernels slowly on CPU, for testing")


def _cuda_unavailable(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return f"the CUDA extension runs on CUDA tensors, got a {device.type} tensor; move the tensors to a GPU"
    if _CUDA_EXTENSION_PROBE is None:
        return "the CUDA extension is not part of this build of progan_fast"
    return _CUDA_EXTENSION_PROBE()


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when `backend` ("torch" or one of ACCELERATED) can run on `device`, else the reason it cannot."""
    return None if backend == "torch" else _UNAVAILABLE[backend](device)


_UNAVAILABLE = {"triton": _triton_unavailable, "cuda": _cuda_unavailable}


OPS: Dict[str, "Op"] = {}  # every op by name, for coverage listings and tests


class Op:
    """One op with its implementations per backend; calling it runs the one selected."""

    def __init__(self, name: str, reference: Callable):
        if name in OPS:
            raise ValueError(f"an op named {name!r} exists already")
        self.name = name
        self.impls: Dict[str, Callable] = {"torch": reference}
        OPS[name] = self

    def register(self, backend: str, impl: Callable) -> None:
        if backend not in ACCELERATED:
            raise ValueError(f"{backend!r} is not an accelerated backend ({', '.join(ACCELERATED)})")
        self.impls[backend] = impl

    def select(self, device: torch.device) -> Callable:
        global _warned_fallback
        backend = get_backend()
        if backend == "torch":
            return self.impls["torch"]
        if backend != "auto":
            reason = unavailable_reason(backend, device)
            if reason is not None:
                raise BackendUnavailableError(
                    f"progan_fast backend {backend!r} cannot run op {self.name}: {reason}. "
                    f"Use set_backend('auto') or set_backend('torch') (or {ENV_VAR}=auto) to run the reference path.")
            return self.impls.get(backend, self.impls["torch"])
        if device.type != "cuda":  # on CPU the reference is the fastest path
            return self.impls["torch"]
        reasons = []
        for candidate in ACCELERATED:
            if candidate in self.impls:
                reason = unavailable_reason(candidate, device)
                if reason is None:
                    return self.impls[candidate]
                reasons.append(f"{candidate}: {reason}")
        if reasons and not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"progan_fast: falling back to the torch backend ({'; '.join(reasons)})", RuntimeWarning,
                          stacklevel=3)
        return self.impls["torch"]

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        if x.numel() == 0 or any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in args):
            return self.impls["torch"](x, *args, **kwargs)  # nothing to compute: every backend gives torch's result
        return self.select(x.device)(x, *args, **kwargs)

    def __repr__(self) -> str:
        return f"Op({self.name}, backends={sorted(self.impls)})"
