"""Fuzzed parity: every op on every available accelerated backend against the torch reference.

Seeded random draws (reproducible: a failure prints the op, seed and drawn case; rerun with
`pytest tests/test_fuzz_parity.py -k "<op> and seed<seed>"`). Sizes: channels 1..600 (mostly not powers
of two), batch 1..16, spatial 1..64, under a per-case work budget so the Triton interpreter stays fast
on CPU; inputs contiguous, non-contiguous or channels_last; alpha 0, 1 or random (float or 0-dim tensor).
Forward, backward, and for the discriminator's ops second order (the gradient-penalty path).
CI runs FUZZ_CASES cases per op and backend (default 30); `-m slow` runs 200 with a larger budget.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import pytest
import torch

import progan_fast
import progan_fast.functional as PF
from progan_fast.backend import OPS, unavailable_reason

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [name for name in ("triton", "cuda") if unavailable_reason(name, DEVICE) is None]
CI_CASES = int(os.environ.get("FUZZ_CASES", "30"))
SLOW_CASES = 200
# Work budgets (elements touched, or multiply-adds for conv/linear) per case.
CI_BUDGET, SLOW_BUDGET = 3e5, 4e6
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE.type == "cuda" else [])
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}  # relative to max |reference|


def log_uniform_int(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def channels(rng: random.Random) -> int:
    return log_uniform_int(rng, 1, 600)


@dataclass
class Case:
    """One drawn call: tensors (index -> shape), the op's other arguments, and the inputs to differentiate."""
    op: str
    seed: int
    shapes: List[tuple]
    kwargs: Dict = field(default_factory=dict)
    layout: str = "contiguous"
    second_order: bool = False

    def __str__(self):
        return f"{self.op} seed={self.seed} shapes={self.shapes} kwargs={self.kwargs} layout={self.layout}"


def draw_alpha(rng: random.Random):
    choice = rng.choice(["zero", "one", "float", "tensor"])
    return {"zero": 0.0, "one": 1.0, "float": rng.random(), "tensor": torch.tensor(rng.random())}[choice]


def spatial(rng: random.Random, low: int = 1, even: bool = False) -> int:
    size = log_uniform_int(rng, low, 64)
    return size + (size % 2) if even else size


def draw(op: str, seed: int, budget: float) -> Case:
    rng = random.Random(f"{op}:{seed}")
    layout = rng.choice(["contiguous", "non_contiguous", "channels_last"])
    while True:  # redraw until the case fits the budget
        n = rng.randint(1, 16)
        c = channels(rng)
        h, w = spatial(rng), spatial(rng)
        if op == "bias_act":
            case = Case(op, seed, [(n, c, h, w), (c,)], dict(activation=rng.choice([None, "lrelu"]),
                                                             negative_slope=rng.choice([0.2, 0.1])),
                        second_order=True)
        elif op == "pixel_norm":
            case = Case(op, seed, [(n, c, h, w)], dict(eps=rng.choice([1e-8, 1e-4])))
        elif op == "minibatch_stddev":
            group = rng.choice([4, 2, None])
            size = n if group is None else min(group, n)
            n = max(n - n % size, 2 if group is None else 1)
            case = Case(op, seed, [(n, c, h, w)], dict(group_size=group), second_order=True)
        elif op == "fade":
            case = Case(op, seed, [(n, c, h, w), (n, c, h, w)], dict(alpha=draw_alpha(rng)), second_order=True)
        elif op == "fade_upsample":
            h, w = spatial(rng, 2, even=True), spatial(rng, 2, even=True)
            case = Case(op, seed, [(n, c, h, w), (n, c, h // 2, w // 2)], dict(alpha=draw_alpha(rng)))
        elif op == "fade_downsample":
            h, w = spatial(rng, 2, even=True), spatial(rng, 2, even=True)
            case = Case(op, seed, [(n, c, h, w)], dict(alpha=draw_alpha(rng)))
        elif op == "equalized_conv2d":
            k, upsample, pixel_norm = rng.choice([1, 3]), rng.random() < 0.3, rng.random() < 0.4
            out = channels(rng)
            case = Case(op, seed, [(n, c, h, w), (out, c, k, k), (out,)],
                        dict(activation=rng.choice([None, "lrelu"]), pixel_norm=pixel_norm, upsample=upsample,
                             gain=rng.choice([1.0, math.sqrt(2)])),
                        second_order=not (pixel_norm or upsample))  # the discriminator's configuration
            work = n * c * out * k * k * h * w * (4 if upsample else 1)
        elif op == "equalized_linear":
            out = channels(rng)
            case = Case(op, seed, [(n, c), (out, c), (out,)], dict(activation=rng.choice([None, "lrelu"])),
                        second_order=True)
            layout = rng.choice(["contiguous", "non_contiguous"])
            work = n * c * out
        elif op == "gradient_penalty":
            case = Case(op, seed, [(n, c, h, w)], dict(weight=rng.choice([10.0, 1.0]), target=rng.random() * 2))
        else:
            raise ValueError(op)
        if op not in ("equalized_conv2d", "equalized_linear"):
            work = sum(math.prod(s) for s in case.shapes)
        if work <= budget:
            case.layout = layout if len(case.shapes[0]) == 4 or layout != "channels_last" else "contiguous"
            return case


CALLS: Dict[str, Callable] = {
    "bias_act": lambda t, kw: PF.bias_act(t[0], t[1], **kw),
    "pixel_norm": lambda t, kw: PF.pixel_norm(t[0], **kw),
    "minibatch_stddev": lambda t, kw: PF.minibatch_stddev(t[0], **kw),
    "fade": lambda t, kw: PF.fade(t[0], t[1], **kw),
    "fade_upsample": lambda t, kw: PF.fade_upsample(t[0], t[1], **kw),
    "fade_downsample": lambda t, kw: PF.fade_downsample(t[0], **kw),
    "equalized_conv2d": lambda t, kw: PF.equalized_conv2d(t[0], t[1], t[2], **kw),
    "equalized_linear": lambda t, kw: PF.equalized_linear(t[0], t[1], t[2], **kw),
    "gradient_penalty": lambda t, kw: PF.gradient_penalty(t[0], **kw),
}


def make_input(shape: tuple, layout: str, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if layout == "non_contiguous":  # every other element of a wider tensor along the last dim
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator)
        x = wide[..., ::2]
    else:
        x = torch.randn(shape, generator=generator)
    x = x.to(DEVICE, dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    return x


def run(case: Case, backend: str, dtype: torch.dtype, truth: bool = False):
    """Forward output, first-order input grads, and for D ops grads of a function of the input gradient.
    truth=True runs the same rounded inputs in float64 (on the torch backend)."""
    generator = torch.Generator().manual_seed(case.seed)
    compute = torch.float64 if truth else dtype

    def draw_like(shape, layout="contiguous"):
        return make_input(shape, layout, dtype, generator).to(compute)

    tensors = [draw_like(shape, case.layout if i == 0 else "contiguous").requires_grad_()
               for i, shape in enumerate(case.shapes)]
    with progan_fast.use_backend(backend):
        out = CALLS[case.op](tensors, case.kwargs)
        grads = torch.autograd.grad(out, tensors, draw_like(out.shape), create_graph=case.second_order)
        results = [out] + list(grads)
        if case.second_order:
            weight = draw_like(grads[0].shape)
            if grads[0].requires_grad:
                results += torch.autograd.grad((grads[0] * weight).sum(), tensors, allow_unused=True,
                                               materialize_grads=True)
            else:  # the input gradient does not depend on any input (a linear op): second order is zero
                results += [torch.zeros_like(t) for t in tensors]
    return [r.detach().double() for r in results]


def check(case: Case, backend: str, dtype: torch.dtype) -> None:
    """The backend's error against a float64 truth may not exceed the tolerance, or 3x the error of the torch
    reference in the same dtype where the formula itself is ill-conditioned (e.g. 1 - alpha near alpha = 1)."""
    if backend not in OPS[case.op].impls:
        pytest.skip(f"{case.op} has no {backend} implementation (it runs the torch reference there)")
    truth, reference = run(case, "torch", dtype, truth=True), run(case, "torch", dtype)
    actual = run(case, backend, dtype)
    labels = ["output"] + [f"grad[{i}]" for i in range(len(case.shapes))] + \
             [f"second-order grad[{i}]" for i in range(len(case.shapes))]
    for label, t, r, a in zip(labels, truth, reference, actual):
        scale = max(t.abs().max().item(), 1e-6)
        error, reference_error = (a - t).abs().max().item() / scale, (r - t).abs().max().item() / scale
        bound = max(TOLERANCE[dtype], 3 * reference_error)
        assert error <= bound, (f"{label}: relative error {error:.2e} > {bound:.1e} (torch reference: "
                                f"{reference_error:.1e}) on {backend}/{dtype}; case: {case}")


OP_NAMES = list(CALLS)


# CI cases, then the long sweep marked slow (`pytest -m slow`), with a larger work budget.
CASES = [pytest.param(draw(op, seed, CI_BUDGET), id=f"{op}-seed{seed}") for op in OP_NAMES
         for seed in range(CI_CASES)] + \
        [pytest.param(draw(op, seed, SLOW_BUDGET), id=f"slow-{op}-seed{seed}", marks=pytest.mark.slow)
         for op in OP_NAMES for seed in range(SLOW_CASES)]


@pytest.mark.skipif(not BACKENDS, reason=f"no accelerated backend can run on {DEVICE.type} here")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_fuzz(case, backend, dtype):
    check(case, backend, dtype)


def test_draws_cover_the_requested_ranges():
    """The generator itself: sizes reach both ends of their ranges, every layout and alpha kind occurs."""
    cases = [draw(op, seed, SLOW_BUDGET) for op in OP_NAMES for seed in range(SLOW_CASES)]
    chans = [case.shapes[0][1] for case in cases if len(case.shapes[0]) == 4]
    sizes = [s for case in cases if len(case.shapes[0]) == 4 for s in case.shapes[0][2:]]
    batches = [case.shapes[0][0] for case in cases]
    assert min(chans) == 1 and max(chans) > 300 and any(c % 2 for c in chans)
    assert min(sizes) == 1 and max(sizes) >= 48
    assert min(batches) == 1 and max(batches) == 16
    assert {case.layout for case in cases} == {"contiguous", "non_contiguous", "channels_last"}
    alphas = [case.kwargs["alpha"] for case in cases if "alpha" in case.kwargs]
    assert any(isinstance(a, torch.Tensor) for a in alphas) and 0.0 in alphas and 1.0 in alphas
    assert str(draw("fade", 7, CI_BUDGET)) == str(draw("fade", 7, CI_BUDGET))  # reproducible
