"""Running an op case on a backend (or as the plain eager chain), checking it against the fp32 torch result before
it is timed, the call that the kernel benchmark times, and the rows and summary of the kernel report."""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as torch_functional

from progan_fast import functional
from progan_fast.backend import OPS, unavailable_reason, use_backend
from progan_fast.testing import relative_error

from .cases import EAGER, SQRT2, OpCase

# Relative error (max |a - b| / max |b|) against fp32 always accepted before timing a backend. fp32 is loose
# because cuDNN and Triton use TF32 tensor cores for fp32 convolutions by default.
CHECK_TOLERANCE = {"fp32": 2e-3, "bf16": 3e-2, "fp16": 3e-2}


def eager_conv_block(x, weight, bias, gain=SQRT2, activation=None, negative_slope=0.2, pixel_norm=False,
                     upsample=False, eps=1e-8):
    """The conv block as plain eager PyTorch: [upsample] -> cuDNN conv with bias -> LeakyReLU -> PixelNorm."""
    if upsample:
        x = torch_functional.interpolate(x, scale_factor=2.0, mode="nearest")
    y = torch_functional.conv2d(x, weight * (gain / math.sqrt(weight[0].numel())), bias,
                                padding=weight.shape[-1] // 2)
    if activation == "lrelu":
        y = torch_functional.leaky_relu(y, negative_slope)
    if pixel_norm:
        y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + eps)
    return y


def run_forward(case: OpCase, backend: str, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    if backend == EAGER:
        return eager_conv_block(*inputs, **case.kwargs)
    with use_backend(backend):
        return getattr(functional, case.op)(*inputs, **case.kwargs)


def backend_skip_reason(case: OpCase, backend: str, device) -> Optional[str]:
    """None when `backend` has its own implementation of the case's op on `device`, else why not."""
    if backend == EAGER:
        return None if case.op == "equalized_conv2d" else f"no eager chain for {case.op} (its torch backend is one)"
    if backend == "torch":
        return None
    reason = unavailable_reason(backend, torch.device(device))
    if reason is not None:
        return f"{backend} backend unavailable: {reason}"
    if backend not in OPS[case.op].impls:
        return f"the {backend} backend has no implementation of {case.op} (it would run the torch one)"
    return None


def outputs_and_grads(case: OpCase, backend: str, inputs: Sequence[torch.Tensor], seed: int = 1):
    """The forward output and, for differentiable cases, the gradients of <output, g> for a random g."""
    out = run_forward(case, backend, inputs)
    if len(case.passes) == 1:
        return [out.detach()]
    generator = torch.Generator(device=out.device).manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator, device=out.device).to(out.dtype)
    return [out.detach(), *torch.autograd.grad(out, list(inputs), grad_out)]


def check_against_torch(case: OpCase, backend: str, device, channels_last: bool = False) -> float:
    """Largest relative error (outputs and gradients) of `backend` against the torch backend run in fp32 on
    the same inputs (channels_last: see OpCase.make_inputs).

    Raises AssertionError when it exceeds both CHECK_TOLERANCE and twice the torch backend's own error in
    the case's dtype (bf16 gradients summed over many pixels are that far from fp32): a wrong kernel is not timed.
    """
    inputs = case.make_inputs(device, channels_last=channels_last)
    exact_inputs = [t.detach().float().requires_grad_(t.requires_grad) for t in inputs]
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):  # the fp32 result without TF32 rounding
        expected = outputs_and_grads(replace(case, dtype_name="fp32"), "torch", exact_inputs)
    names = ["output"] + [f"grad of input {i}" for i in range(len(expected) - 1)]

    def worst_error(name: str) -> Tuple[str, float]:
        errors = zip(names, map(relative_error, outputs_and_grads(case, name, inputs), expected))
        return max(errors, key=lambda item: item[1])

    worst, error = worst_error(backend)
    allowed = max(CHECK_TOLERANCE[case.dtype_name], 2 * worst_error("torch")[1])
    if error > allowed:
        raise AssertionError(f"{case.id} on {backend}: {worst} is off the fp32 torch result by relative error "
                             f"{error:.3g} (allowed {allowed:.3g}: twice the torch backend's own error in "
                             f"{case.dtype_name}, at least {CHECK_TOLERANCE[case.dtype_name]}); not timed")
    return error


def timed_call(case: OpCase, backend: str, pass_: str, input_sets: List[List[torch.Tensor]]) -> Callable[[], object]:
    """A no-argument function running one pass, each call on the next input set (round robin)."""
    order = itertools.cycle(range(len(input_sets)))
    if pass_ == "forward":
        return lambda: run_forward(case, backend, input_sets[next(order)])
    grad_outs = [torch.randn_like(run_forward(case, backend, inputs)) for inputs in input_sets]
    retained = [run_forward(case, backend, inputs) for inputs in input_sets] if pass_ == "backward" else None

    def call():
        index = next(order)
        out = retained[index] if retained else run_forward(case, backend, input_sets[index])
        return torch.autograd.grad(out, input_sets[index], grad_outs[index], retain_graph=retained is not None)
    return call


# ---------------------------------------------------------------------------------------------
# Rows of the kernel report

def kernel_row(case: OpCase, backend: str, pass_: str, seconds: float, ceilings: Dict[str, float],
               max_error: Optional[float]) -> Dict[str, object]:
    """One line of the kernel report."""
    flops, nbytes = case.cost(pass_)
    gbps, tflops = nbytes / seconds / 1e9, flops / seconds / 1e12
    return {"case": case.id, "block": case.block, "op": case.op, "resolution": case.resolution, "batch": case.batch,
            "shape": "x".join(map(str, case.input_shapes()[0])), "dtype": case.dtype_name, "pass": pass_,
            "backend": backend, "median_us": seconds * 1e6, "GBps": gbps, "TFLOPs": tflops,
            "pct_copy": 100 * gbps / ceilings["copy_GBps"], "pct_matmul": 100 * tflops / ceilings["bf16_matmul_TFLOPs"],
            "max_rel_error_vs_fp32": max_error}


def add_speedups(rows: List[Dict[str, object]]) -> None:
    """Add speedup_vs_torch and speedup_vs_eager to every row whose case and pass have those baselines."""
    baseline = {(row["case"], row["pass"], row["backend"]): row["median_us"] for row in rows}
    for row in rows:
        for name in ("torch", EAGER):
            reference = baseline.get((row["case"], row["pass"], name))
            row[f"speedup_vs_{name}"] = reference / row["median_us"] if reference else None


def summarize_kernels(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per backend and pass: geometric-mean speedup over torch, its range, and the best fractions of the ceilings."""
    groups: Dict[Tuple[str, str], List[Dict[str, object]]] = {}
    for row in rows:
        if row["backend"] != "torch" and row.get("speedup_vs_torch"):
            groups.setdefault((row["backend"], row["pass"]), []).append(row)

    def geomean(values):
        return math.exp(statistics.fmean(map(math.log, values))) if values else None

    summary = []
    for (backend, pass_), group in sorted(groups.items()):
        speedups = [row["speedup_vs_torch"] for row in group]
        over_eager = [row["speedup_vs_eager"] for row in group if backend != EAGER and row.get("speedup_vs_eager")]
        summary.append({"backend": backend, "pass": pass_, "cases": len(group),
                        "geomean_speedup_vs_torch": geomean(speedups),
                        "geomean_speedup_vs_eager_conv": geomean(over_eager),
                        "min_speedup": min(speedups), "max_speedup": max(speedups),
                        "slower_than_torch": sum(s < 1 for s in speedups),
                        "best_pct_copy": max(row["pct_copy"] for row in group),
                        "best_pct_matmul": max(row["pct_matmul"] for row in group)})
    return summary
