"""Benchmark harness: op cases at ProGAN training sizes, cost models, GPU timing, ceilings, the
WGAN-GP training step, the training-step table and report writing.

Used by ``benchmarks/`` (``pytest benchmarks/``) and ``benchmarks/run_gpu.sh``. Everything that needs
a GPU says so through `gpu_skip_reason`; the rest (cases, costs, planning, reports) is plain Python.

Command line: ``python -m progan_fast.benchmarking summary RESULTS_DIR`` prints the short summary of
a finished run.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import itertools
import json
import math
import os
import pathlib
import pkgutil
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as torch_functional

from . import functional, ops
from .architecture import Widths
from .backend import Op, unavailable_reason, use_backend
from .testing import relative_error

RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Official minibatch per resolution (1-GPU preset; 1024 as 512).
OFFICIAL_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("forward", "backward", "forward+backward")
EAGER = "eager"  # the plain eager chain a user would write: cuDNN conv (+bias) -> LeakyReLU -> PixelNorm
KERNEL_BACKENDS = ("torch", EAGER, "triton", "cuda")
# Relative error (max |a - b| / max |b|) against fp32 always accepted before timing a backend. fp32 is loose
# because cuDNN and Triton use TF32 tensor cores for fp32 convolutions by default.
CHECK_TOLERANCE = {"fp32": 2e-3, "bf16": 3e-2, "fp16": 3e-2}
SQRT2 = math.sqrt(2.0)
_WIDTHS = Widths(1024)

ENV_MODE = "PROGAN_FAST_BENCH"            # quick (default) or full
ENV_OUT = "PROGAN_FAST_BENCH_OUT"         # results folder (default benchmarks/results)


def channels(resolution: int) -> int:
    """Official feature maps at a resolution: nf(log2(res) - 1) = min(8192 / 2**stage, 512)."""
    return _WIDTHS.nf(int(math.log2(resolution)) - 1)


# ---------------------------------------------------------------------------------------------
# Sweeps

@dataclass(frozen=True)
class Sweep:
    """What `pytest benchmarks/` runs: the quick sweep fits the one-command GPU run (< 10 minutes)."""

    name: str
    resolutions: Tuple[int, ...]
    dtypes: Tuple[str, ...]
    seconds_per_benchmark: float        # GPU time spent in the timed rounds of one kernel benchmark
    kernel_budget_seconds: float        # all kernel benchmarks; the rest skip once it is spent
    step_warmup: int                    # training steps per column before timing
    step_rounds: int                    # timed training steps per column (interleaved)
    compile_resolutions: Tuple[int, ...]  # where the torch.compile column runs (compiling is slow)
    step_budget_seconds: float

    @staticmethod
    def from_env(environ=os.environ) -> "Sweep":
        mode = environ.get(ENV_MODE, "quick").lower()
        if mode not in SWEEPS:
            raise ValueError(f"{ENV_MODE} must be one of {', '.join(SWEEPS)}, got {mode!r}")
        return SWEEPS[mode]


SWEEPS = {
    "quick": Sweep("quick", (4, 16, 64, 256, 1024), ("bf16",), 0.05, 170.0, 2, 6, (64,), 170.0),
    "full": Sweep("full", RESOLUTIONS, tuple(DTYPES), 0.3, 3600.0, 3, 20, RESOLUTIONS, 3600.0),
}


class Budget:
    """A wall-clock allowance that starts on first use; `spent` tells the benchmarks to skip."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, None

    def spent(self) -> bool:
        if self.start is None:
            self.start = self.clock()
        return self.clock() - self.start > self.seconds


# ---------------------------------------------------------------------------------------------
# Op cases

@dataclass(frozen=True)
class OpCase:
    """One public op at one shape of ProGAN training: `block` names where it occurs."""

    block: str
    op: str
    resolution: int
    batch: int
    in_channels: int
    out_channels: int
    size: int                    # input height = width (features for linear)
    dtype_name: str
    kernel: int = 0
    options: Tuple[Tuple[str, object], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.block.replace(' ', '_')}-r{self.resolution}-{self.dtype_name}"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def kwargs(self) -> Dict[str, object]:
        return dict(self.options)

    @property
    def passes(self) -> Tuple[str, ...]:
        return ("forward",) if self.op == "fade_downsample" else PASSES  # reals carry no gradient

    @property
    def backends(self) -> Tuple[str, ...]:
        return KERNEL_BACKENDS if self.op == "equalized_conv2d" else tuple(b for b in KERNEL_BACKENDS if b != EAGER)

    def input_shapes(self) -> List[Tuple[int, ...]]:
        n, c, s = self.batch, self.in_channels, self.size
        feature = (n, c, s, s)
        if self.op == "bias_act":
            return [feature, (c,)]
        if self.op == "fade":
            return [feature, feature]
        if self.op == "fade_upsample":
            return [feature, (n, c, s // 2, s // 2)]
        if self.op == "equalized_linear":
            return [(n, c), (self.out_channels, c), (self.out_channels,)]
        if self.op == "equalized_conv2d":
            return [feature, (self.out_channels, c, self.kernel, self.kernel), (self.out_channels,)]
        return [feature]

    def make_inputs(self, device, seed: int = 0) -> List[torch.Tensor]:
        """Random N(0, 1) inputs (never zeros), requiring grad where the op is differentiated."""
        generator = torch.Generator(device=device).manual_seed(seed)
        # Drawn in fp32 then cast, so that every dtype of a case sees the same values.
        return [torch.randn(shape, generator=generator, device=device).to(self.dtype)
                .requires_grad_(len(self.passes) > 1) for shape in self.input_shapes()]

    def macs(self) -> int:
        if self.op == "equalized_linear":
            return self.batch * self.in_channels * self.out_channels
        if self.op == "equalized_conv2d":
            out_size = self.size * (2 if self.kwargs.get("upsample") else 1)
            return self.batch * self.out_channels * out_size ** 2 * self.in_channels * self.kernel ** 2
        return 0

    def output_elements(self) -> int:
        if self.op == "equalized_linear":
            return self.batch * self.out_channels
        out_size = self.size * (2 if self.kwargs.get("upsample") else 1)
        return self.batch * self.out_channels * out_size ** 2

    def cost(self, pass_: str) -> Tuple[float, float]:
        """(FLOPs, bytes) of one call: the minimum DRAM traffic of each pass (every tensor read or written once)."""
        if pass_ not in PASSES:
            raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_!r}")
        forward_cost, backward_cost = self._pass_costs()
        flops, elements = {"forward": forward_cost, "backward": backward_cost,
                           "forward+backward": tuple(a + b for a, b in zip(forward_cost, backward_cost))}[pass_]
        return float(flops), float(elements * self.dtype.itemsize)

    def _pass_costs(self) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        """((forward FLOPs, elements), (backward FLOPs, elements))."""
        shapes = self.input_shapes()
        n = math.prod(shapes[0])
        if self.op in ("equalized_linear", "equalized_conv2d"):
            inputs, weights, out = n, math.prod(shapes[1]), self.output_elements()
            epilogue = 3 * out  # bias, LeakyReLU, PixelNorm
            return ((2 * self.macs() + epilogue, inputs + weights + out + self.out_channels),
                    (4 * self.macs() + epilogue, 2 * inputs + 2 * weights + 2 * out))
        pixels = self.batch * self.size ** 2
        per_element = {  # (forward flops, forward elements, backward flops, backward elements) per input element
            "bias_act": (2, 2, 2, 3), "pixel_norm": (4, 2, 6, 3), "minibatch_stddev": (5, 2, 6, 3),
            "fade": (3, 3, 2, 3), "fade_upsample": (3, 2.25, 2, 2.25), "fade_downsample": (4, 2, 4, 2),
            "gradient_penalty": (2, 1, 2, 2)}[self.op]
        extra = pixels if self.op == "minibatch_stddev" else 0  # the appended stddev channel
        return ((per_element[0] * n, per_element[1] * n + extra), (per_element[2] * n, per_element[3] * n + extra))


def op_cases(resolutions: Iterable[int], dtype_names: Iterable[str]) -> List[OpCase]:
    """The ops of G and D (and the loss) at each training resolution, official widths and batch sizes."""
    cases: Dict[str, OpCase] = {}
    for dtype_name in dtype_names:
        for res in resolutions:
            for block, op, c_in, c_out, size, kernel, options in _blocks_at(res):
                case = OpCase(block, op, res, OFFICIAL_BATCH[res], c_in, c_out, size, dtype_name, kernel,
                              tuple(sorted(options.items())))
                cases.setdefault(case.id, case)
    return list(cases.values())


def _blocks_at(res: int):
    """(block, op, in_channels, out_channels, size, kernel, options) of one training resolution."""
    c, half = channels(res), channels(max(res // 2, 4))
    g_conv = {"activation": "lrelu", "pixel_norm": True}
    blocks = [
        ("G toRGB", "equalized_conv2d", c, 3, res, 1, {"gain": 1.0}),
        ("D fromRGB", "equalized_conv2d", 3, c, res, 1, {"activation": "lrelu"}),
        ("D conv0", "equalized_conv2d", c, c, res, 3, {"activation": "lrelu"}),
        ("bias_act", "bias_act", c, c, res, 0, {"activation": "lrelu"}),
        ("pixel_norm", "pixel_norm", c, c, res, 0, {}),
        ("gradient_penalty", "gradient_penalty", 3, 3, res, 0, {}),
        ("D minibatch_stddev", "minibatch_stddev", channels(4), channels(4), 4, 0, {}),
    ]
    if res == 4:
        blocks += [
            ("G dense", "equalized_linear", channels(4), channels(4) * 16, 0, 0, {"gain": SQRT2 / 4}),
            ("G conv 4x4", "equalized_conv2d", c, c, 4, 3, g_conv),
            ("D conv 4x4", "equalized_conv2d", c + 1, c, 4, 3, {"activation": "lrelu"}),
            ("D dense0", "equalized_linear", c * 16, c, 0, 0, {"activation": "lrelu"}),
        ]
    else:
        blocks += [
            ("G conv0 up", "equalized_conv2d", half, c, res // 2, 3, dict(g_conv, upsample=True)),
            ("G conv1", "equalized_conv2d", c, c, res, 3, g_conv),
            ("D conv1", "equalized_conv2d", c, half, res, 3, {"activation": "lrelu"}),
            ("G fade_upsample", "fade_upsample", 3, 3, res, 0, {"alpha": 0.5}),
            ("D fade", "fade", half, half, res // 2, 0, {"alpha": 0.5}),
            ("reals fade_downsample", "fade_downsample", 3, 3, res, 0, {"alpha": 0.5}),
        ]
    return blocks


# ---------------------------------------------------------------------------------------------
# Running a case on a backend

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


def registered_ops() -> Dict[str, Op]:
    """Every dispatching op of `progan_fast.ops` by name, with the backends it has implementations for."""
    modules = [importlib.import_module(f"{ops.__name__}.{info.name}") for info in pkgutil.iter_modules(ops.__path__)]
    return {value.name: value for module in modules for value in vars(module).values() if isinstance(value, Op)}


def gpu_skip_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build of torch"
        return f"GPU benchmarks need an NVIDIA GPU; CUDA is not available here ({build})"
    return None


def backend_skip_reason(case: OpCase, backend: str, device) -> Optional[str]:
    """None when `backend` has its own implementation of the case's op on `device`, else why not."""
    if backend == EAGER:
        return None if case.op == "equalized_conv2d" else f"no eager chain for {case.op} (its torch backend is one)"
    if backend == "torch":
        return None
    reason = unavailable_reason(backend, torch.device(device))
    if reason is not None:
        return f"{backend} backend unavailable: {reason}"
    if backend not in registered_ops()[case.op].impls:
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


def check_against_torch(case: OpCase, backend: str, device) -> float:
    """Largest relative error (outputs and gradients) of `backend` against the torch backend run in fp32 on
    the same inputs.

    Raises AssertionError when it exceeds both CHECK_TOLERANCE and twice the torch backend's own error in
    the case's dtype (bf16 gradients summed over many pixels are that far from fp32): a wrong kernel is not timed.
    """
    inputs = case.make_inputs(device)
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


def rotation_count(bytes_per_set: float, l2_bytes: int, memory_budget: float = 8 * 2 ** 30,
                   max_sets: int = 64) -> int:
    """Input sets to cycle through so that a set is out of L2 when it comes round again."""
    wanted = 1 + math.ceil(2 * l2_bytes / max(bytes_per_set, 1.0))
    affordable = max(1, int(memory_budget // max(bytes_per_set, 1.0)))
    return max(1, min(wanted, affordable, max_sets))


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


def plan_rounds(call_seconds: float, budget_seconds: float, round_seconds: float = 1e-3,
                min_rounds: int = 5, max_rounds: int = 200) -> Tuple[int, int]:
    """(rounds, iterations per round): rounds of at least `round_seconds` so that the synchronisation
    at each end of a round is amortised, as many as fit in the budget."""
    call_seconds = max(call_seconds, 1e-7)
    iterations = max(1, math.ceil(round_seconds / call_seconds))
    rounds = int(budget_seconds / (iterations * call_seconds))
    return max(min_rounds, min(max_rounds, rounds)), iterations


class CudaEventClock:
    """A pytest-benchmark timer read from CUDA events: seconds of GPU time line, synchronised on each reading.

    Each reading records an event and adds its distance from the previous one, so the precision of the
    events' float milliseconds never degrades over a long run.
    """

    def __init__(self):
        self.seconds, self.last = 0.0, None

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self.last is not None:
            self.seconds += self.last.elapsed_time(event) / 1e3
        self.last = event
        return self.seconds


def gpu_median_seconds(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> float:
    """Median over `reps` calls of the GPU time between CUDA events around each call, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def l2_cache_bytes(device) -> int:
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2 ** 20)


def measure_ceilings(device, copy_bytes: int = 2 ** 30, matmul_size: int = 8192) -> Dict[str, float]:
    """The 100% marks: device-to-device copy rate (read + write bytes) and bf16 matmul rate."""
    def copy_seconds() -> float:
        source = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).normal_()
        target = torch.empty_like(source)
        return gpu_median_seconds(lambda: target.copy_(source))

    def matmul_seconds() -> float:
        a = torch.randn(matmul_size, matmul_size, device=device, dtype=torch.bfloat16)
        b = torch.randn_like(a)
        return gpu_median_seconds(lambda: a @ b)

    return {"copy_GBps": 2 * copy_bytes / copy_seconds() / 1e9,
            "bf16_matmul_TFLOPs": 2 * matmul_size ** 3 / matmul_seconds() / 1e12}


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


# ---------------------------------------------------------------------------------------------
# Device facts

def device_facts(device=None) -> Dict[str, object]:
    """Date, software versions and, on a GPU, the device's name, memory, clocks and power limit (NVML)."""
    facts: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _package_version("triton")}
    if not torch.cuda.is_available():
        facts["device"] = "cpu (no CUDA device)"
        return facts
    device = torch.device(device or "cuda")
    props = torch.cuda.get_device_properties(device)
    facts.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                 sm_count=props.multi_processor_count, memory_GiB=round(props.total_memory / 2 ** 30, 1),
                 l2_cache_MiB=l2_cache_bytes(device) / 2 ** 20)
    facts.update(_nvml_facts(props, device))
    return facts


def _package_version(name: str) -> Optional[str]:
    if importlib.util.find_spec(name) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _nvml_facts(props, device) -> Dict[str, object]:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as error:  # NVML missing or no driver: the torch facts still stand
        return {"nvml": f"unavailable ({error})"}
    try:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{props.uuid}")
        except Exception:  # older torch without props.uuid, or another UUID spelling
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return {"driver": pynvml.nvmlSystemGetDriverVersion(),
                "nvml_name": pynvml.nvmlDeviceGetName(handle),
                "max_sm_clock_MHz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "max_memory_clock_MHz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                "sm_clock_MHz_at_report": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "power_limit_W": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000}
    except Exception as error:
        return {"nvml": f"query failed ({error})"}
    finally:
        pynvml.nvmlShutdown()


# ---------------------------------------------------------------------------------------------
# Training step (WGAN-GP, official settings) and the training-step table

GP_WEIGHT, DRIFT = 10.0, 0.001
ADAM = {"lr": 1e-3, "betas": (0.0, 0.99), "eps": 1e-8}


def wgan_gp_step(generator, discriminator, opt_g, opt_d, latents, reals, res: int, alpha=1.0,
                 autocast_dtype: Optional[torch.dtype] = None, penalty_discriminator=None):
    """One D step (WGAN-GP with drift) then one G step (-D(G(z))); returns the two losses (no host sync).

    `penalty_discriminator` evaluates D on the mixed images whose input gradient is penalised: the double
    backward needs an eager module (torch.compile cannot differentiate twice).
    """
    penalty_discriminator = penalty_discriminator or discriminator
    autocast = torch.autocast(reals.device.type, dtype=autocast_dtype or torch.bfloat16,
                              enabled=autocast_dtype is not None)
    with autocast:
        with torch.no_grad():
            fakes = generator(latents, res, alpha).to(reals.dtype)
        real_scores = discriminator(reals, alpha).float()
        fake_scores = discriminator(fakes, alpha).float()
        mix = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device, dtype=reals.dtype)
        mixed = torch.lerp(reals, fakes, mix).requires_grad_(True)
        mixed_scores = penalty_discriminator(mixed, alpha).float()
    (mixed_grad,) = torch.autograd.grad(mixed_scores.sum(), mixed, create_graph=True)
    d_loss = (fake_scores.mean() - real_scores.mean() + DRIFT * real_scores.square().mean()
              + functional.gradient_penalty(mixed_grad, GP_WEIGHT))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    discriminator.requires_grad_(False)  # the G step needs no gradient for D's weights
    with autocast:
        g_loss = -discriminator(generator(latents, res, alpha), alpha).float().mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    return d_loss.detach(), g_loss.detach()


@dataclass(frozen=True)
class StepColumn:
    """One way of running the training step; a column of the table."""

    name: str
    fast: bool = False              # progan_fast models (else the plain reference models)
    backend: str = "torch"
    autocast_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    compile: bool = False           # torch.compile G and D's forward; the GP double backward stays eager


REFERENCE_COLUMNS = (
    StepColumn("reference eager fp32"),
    StepColumn("reference eager bf16 autocast + channels_last", autocast_dtype=torch.bfloat16, channels_last=True),
    StepColumn("reference torch.compile bf16 + channels_last (GP double backward eager)",
               autocast_dtype=torch.bfloat16, channels_last=True, compile=True),
)


def step_columns(device) -> List[StepColumn]:
    """The reference columns, then progan_fast bf16 on each accelerated backend that can run here."""
    fast = [StepColumn(f"progan_fast {name} bf16", fast=True, backend=name, autocast_dtype=torch.bfloat16)
            for name in ("triton", "cuda") if unavailable_reason(name, torch.device(device)) is None]
    return list(REFERENCE_COLUMNS) + fast


def state_bytes(modules, optimizers) -> int:
    """Bytes held by parameters, their gradients and the optimizer state."""
    params = [p for module in modules for p in module.parameters()]
    tensors = params + [p.grad for p in params if p.grad is not None]
    tensors += [value for optimizer in optimizers for state in optimizer.state.values()
                for value in state.values() if torch.is_tensor(value)]
    return sum(t.numel() * t.element_size() for t in tensors)


class StepRunner:
    """One column at one resolution: its own models (same initial weights as the others) and optimizers."""

    def __init__(self, column: StepColumn, res: int, weights, latents, reals):
        from . import models, reference
        package = models if column.fast else reference
        device = reals.device
        with torch.device(device):
            self.generator, self.discriminator = package.Generator(res), package.Discriminator(res)
        self.generator.load_state_dict(weights[0])
        self.discriminator.load_state_dict(weights[1])
        if column.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
            reals = reals.contiguous(memory_format=torch.channels_last)
        self.optimizers = (torch.optim.Adam(self.generator.parameters(), **ADAM),
                           torch.optim.Adam(self.discriminator.parameters(), **ADAM))
        generator, discriminator = self.generator, self.discriminator
        if column.compile:
            torch._dynamo.reset()  # a fresh cache per resolution, so earlier sizes do not use up the recompile limit
            generator, discriminator = torch.compile(generator), torch.compile(discriminator)
        self.column, self.res, self.latents, self.reals = column, res, latents, reals
        self.models = (generator, discriminator)

    def step(self):
        with use_backend(self.column.backend):
            return wgan_gp_step(*self.models, *self.optimizers, self.latents, self.reals, self.res,
                                autocast_dtype=self.column.autocast_dtype, penalty_discriminator=self.discriminator)

    def timed_step(self) -> Tuple[float, int]:
        """(GPU seconds, peak bytes) of one step; peak counts this column's own state, not the other columns'."""
        torch.cuda.synchronize()
        others = torch.cuda.memory_allocated() - state_bytes((self.generator, self.discriminator), self.optimizers)
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - others


def training_step_rows(res: int, columns: Sequence[StepColumn], warmup: int, rounds: int,
                       device="cuda", seed: int = 0) -> List[Dict[str, object]]:
    """Interleaved measurement of every column at one resolution: same process, same weights, same inputs.

    A column that fails (build, compile, or a step) is reported with its error and leaves the others running.
    """
    from . import reference
    batch = OFFICIAL_BATCH[res]
    torch.manual_seed(seed)
    with torch.device(device):
        weights = (reference.Generator(res).state_dict(), reference.Discriminator(res).state_dict())
        latents = torch.randn(batch, channels(4))
        reals = torch.rand(batch, 3, res, res) * 2 - 1
    rows = {column.name: {"resolution": res, "batch": batch, "column": column.name, "error": None}
            for column in columns}
    runners, times, peaks = {}, {column.name: [] for column in columns}, {column.name: 0 for column in columns}

    def attempt(name: str, action: Callable[[], object]):
        try:
            return action()
        except Exception as error:  # reported in the table; the other columns go on
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            rows[name]["error"] = f"{type(error).__name__}: {first_line}"
            runners.pop(name, None)
            return None

    for column in columns:
        runner = attempt(column.name, lambda: StepRunner(column, res, weights, latents, reals))
        if runner is not None:
            runners[column.name] = runner
            for _ in range(warmup):
                if attempt(column.name, runner.step) is None:
                    break
    for _ in range(rounds):
        for name, runner in list(runners.items()):
            measured = attempt(name, runner.timed_step)
            if measured is not None:
                times[name].append(measured[0])
                peaks[name] = max(peaks[name], measured[1])
    for name, row in rows.items():
        if times[name] and row["error"] is None:
            seconds = statistics.median(times[name])
            row.update(step_ms=seconds * 1e3, images_per_s=batch / seconds, peak_GiB=peaks[name] / 2 ** 30,
                       steps_timed=len(times[name]))
    return list(rows.values())


def official_schedule(final_res: int = 1024, total_kimg: int = 12000, stable_kimg: int = 600,
                      fade_kimg: int = 600) -> Dict[int, int]:
    """Images shown per resolution in the official schedule: 600k at 4x4, then 600k fade + 600k stable per
    resolution, the final resolution training on until the total (12M images for 1024)."""
    images, shown = {}, 0
    for res in RESOLUTIONS[:RESOLUTIONS.index(final_res) + 1]:
        images[res] = (stable_kimg if res == 4 else fade_kimg + stable_kimg) * 1000
        shown += images[res]
    if shown > total_kimg * 1000:
        raise ValueError(f"the phases need {shown} images, more than total_kimg={total_kimg}k")
    images[final_res] += total_kimg * 1000 - shown
    return images


def project_schedule_hours(images_per_s: Dict[int, float], schedule: Dict[int, int]) -> Optional[float]:
    """Wall time of the schedule from measured per-resolution rates (fade phases at the stable rate);
    None when a resolution was not measured."""
    if any(not images_per_s.get(res) for res in schedule):
        return None
    return sum(images / images_per_s[res] for res, images in schedule.items()) / 3600


def training_table(rows: List[Dict[str, object]]) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
    """(table rows: one per resolution with images/s and peak GiB per column, projection rows per column)."""
    columns = list(dict.fromkeys(row["column"] for row in rows))
    by_res: Dict[int, Dict[str, object]] = {}
    for row in rows:
        line = by_res.setdefault(row["resolution"], {"resolution": row["resolution"], "batch": row["batch"]})
        line[row["column"]] = (f"{row['images_per_s']:.1f} img/s, {row['peak_GiB']:.2f} GiB" if row.get("images_per_s")
                               else f"failed: {row['error']}" if row["error"] else "not run")
    schedule = official_schedule()
    hours = {column: project_schedule_hours({row["resolution"]: row.get("images_per_s") for row in rows
                                             if row["column"] == column}, schedule) for column in columns}
    baseline = hours[columns[0]] if columns else None
    projections = [{"column": column, "projected_12M_schedule_hours": value,
                    "projected_days": value / 24 if value else None,
                    "speedup_vs_first_column": baseline / value if baseline and value else None}
                   for column, value in hours.items()]
    return [by_res[res] for res in sorted(by_res)], projections


# ---------------------------------------------------------------------------------------------
# Reports

def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: List[Dict[str, object]], columns: Optional[Sequence[str]] = None) -> str:
    """A Markdown table of dicts (columns: the given ones, else the keys of all rows in order)."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """A titled report: device facts, notes and tables, written as NAME.json and NAME.md."""

    title: str
    facts: Dict[str, object]
    tables: Dict[str, List[Dict[str, object]]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"# {self.title}\n", "\n".join(f"- {key}: {value}" for key, value in self.facts.items()) + "\n"]
        parts += [f"{note}\n" for note in self.notes]
        for name, rows in self.tables.items():
            parts.append(f"## {name}\n\n" + (markdown_table(rows) if rows else "(no rows)\n"))
        return "\n".join(parts)

    def write(self, folder, name: str) -> Tuple[pathlib.Path, pathlib.Path]:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
        json_path.write_text(json.dumps(asdict(self), indent=1, default=str) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def results_folder(environ=os.environ) -> pathlib.Path:
    default = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    return pathlib.Path(environ.get(ENV_OUT) or default)


def summary_text(folder) -> str:
    """The short end-of-run text: training-step projections and per-backend kernel speedups."""
    folder, parts = pathlib.Path(folder), []
    for name, tables in (("training_steps", ("images per second and peak memory", "projected official schedule")),
                         ("kernels", ("summary per backend and pass",))):
        path = folder / f"{name}.json"
        if not path.exists():
            parts.append(f"{name}: no results in {folder}\n")
            continue
        report = json.loads(path.read_text())
        parts.append(f"## {report['title']} ({report['facts'].get('device')}, {report['facts'].get('date_utc')})\n")
        parts += [f"### {table}\n\n{markdown_table(report['tables'][table])}" for table in tables
                  if report["tables"].get(table)]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m progan_fast.benchmarking", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="print the short summary of a results folder")
    summary.add_argument("folder", nargs="?", default=None, help=f"results folder (default: ${ENV_OUT} or "
                                                                 "benchmarks/results)")
    args = parser.parse_args(argv)
    print(summary_text(args.folder or results_folder()))


if __name__ == "__main__":
    main()
