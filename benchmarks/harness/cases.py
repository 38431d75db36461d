"""Op cases: every public op at the shapes it has in ProGAN training (official widths and minibatch sizes, from
the official preset), their cost model (FLOPs and the minimum DRAM traffic of each pass), and the sweeps that
choose which cases and steps a benchmark run covers (and the dry run's tiny sizes)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

import torch

from progan_fast.architecture import Widths
from progan_fast.backend import ACCELERATED, KERNEL_DTYPES
from progan_fast.training.config import OFFICIAL_MINIBATCH, TrainConfig, preset_config

RESOLUTIONS = tuple(OFFICIAL_MINIBATCH)  # 4 .. 1024
# Most of the official schedule's time first (more images and more work per image at the high resolutions), so
# that a sweep cut short by its time budget loses the least important sizes.
BY_IMPORTANCE = tuple(reversed(RESOLUTIONS))
# The kernels' storage dtypes by the short names of the reports (and of --amp), in report order.
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items() if dtype in KERNEL_DTYPES}
PASSES = ("forward", "backward", "forward+backward")
EAGER = "eager"  # the plain eager chain a user would write: cuDNN conv (+bias) -> LeakyReLU -> PixelNorm
KERNEL_BACKENDS = ("torch", EAGER) + ACCELERATED
SQRT2 = math.sqrt(2.0)
OFFICIAL = dataclasses.replace(preset_config("official"), resolution=1024)
# The dry run's networks and batches: the official settings otherwise, small enough for the Triton interpreter.
DRY_RUN = dataclasses.replace(OFFICIAL, resolution=8, fmap_base=32, fmap_max=16, minibatch={4: 4, 8: 4})

ENV_MODE = "PROGAN_FAST_BENCH"  # quick (default), full or dry
ENV_SECONDS = "PROGAN_FAST_BENCH_SECONDS"  # overrides the sweep's time budgets (the staged run's stage caps)


def widths(config: TrainConfig) -> Widths:
    return Widths(config.resolution, config.fmap_base, config.fmap_max)


def channels(resolution: int, config: TrainConfig = OFFICIAL) -> int:
    """Feature maps at a resolution: nf(log2(res) - 1) = min(fmap_base / 2**stage, fmap_max) (official: 8192, 512)."""
    return widths(config).nf(int(math.log2(resolution)) - 1)


# ---------------------------------------------------------------------------------------------
# Sweeps

@dataclass(frozen=True)
class Sweep:
    """What `pytest benchmarks/` runs. quick: the staged GPU run's stages; full: every resolution and dtype;
    dry: the same code on CPU at tiny sizes, timed by the host clock (CUDA events need a GPU), torch.compile with
    aot_eager (inductor generates C++ on a CPU, not the GPU's Triton code, and takes a minute a graph there)."""

    name: str
    resolutions: Tuple[int, ...]        # of the kernel cases, in the order they run
    dtypes: Tuple[str, ...]
    seconds_per_benchmark: float        # time spent in the timed rounds of one kernel benchmark
    kernel_budget_seconds: float        # all kernel benchmarks; the rest skip once it is spent
    step_warmup: int                    # training steps per column and phase before timing
    step_rounds: int                    # timed training steps per column and phase (interleaved)
    compile_resolutions: Tuple[int, ...]  # where the torch.compile column runs (compiling is slow)
    step_budget_seconds: float
    step_resolutions: Tuple[int, ...] = BY_IMPORTANCE
    min_rounds: int = 5                 # of a kernel benchmark (and the calls of its first estimate)
    dry: bool = False

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    @property
    def compile_backend(self) -> str:
        return "aot_eager" if self.dry else "inductor"

    @property
    def ceiling_sizes(self) -> Tuple[int, int]:
        """(bytes copied, matmul size) of the ceilings: 1 GiB and 8192^3 on a GPU, a CPU's share in dry runs."""
        return (2 ** 24, 256) if self.dry else (2 ** 30, 8192)

    def config(self, resolution: int) -> TrainConfig:
        """The training settings and networks of the step table and the kernel cases, up to `resolution`."""
        return dataclasses.replace(DRY_RUN if self.dry else OFFICIAL, resolution=resolution)

    @staticmethod
    def from_env(environ=os.environ) -> "Sweep":
        mode = environ.get(ENV_MODE, "quick").lower()
        if mode not in SWEEPS:
            raise ValueError(f"{ENV_MODE} must be one of {', '.join(SWEEPS)}, got {mode!r}")
        sweep = SWEEPS[mode]
        if environ.get(ENV_SECONDS):
            seconds = float(environ[ENV_SECONDS])
            sweep = dataclasses.replace(sweep, kernel_budget_seconds=seconds, step_budget_seconds=seconds)
        return sweep


SWEEPS = {
    "quick": Sweep("quick", (1024, 256, 64, 16, 4), ("bf16",), 0.05, 170.0, 2, 6, (64,), 170.0),
    "full": Sweep("full", BY_IMPORTANCE, tuple(DTYPES), 0.3, 3600.0, 3, 20, RESOLUTIONS, 3600.0),
    # Dry runs prove the code, not the speed: one call per timing, no warm-up steps.
    "dry": Sweep("dry", (8,), ("fp32",), 0.0, 120.0, 0, 1, (8,), 120.0, step_resolutions=(8, 4), min_rounds=1,
                 dry=True),
    "dry-full": Sweep("dry-full", (8, 4), ("fp32",), 0.0, 120.0, 0, 1, (8, 4), 120.0, step_resolutions=(8, 4),
                      min_rounds=1, dry=True),
}


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

    def make_inputs(self, device, seed: int = 0, channels_last: bool = False) -> List[torch.Tensor]:
        """Random N(0, 1) inputs (never zeros), requiring grad where the op is differentiated; channels_last:
        the 4-D ones (feature maps, conv weights) in that layout, as the trainer keeps them on a GPU."""
        generator = torch.Generator(device=device).manual_seed(seed)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # Drawn in fp32 then cast, so that every dtype of a case sees the same values.
        return [torch.randn(shape, generator=generator, device=device)
                .to(self.dtype, memory_format=layout if len(shape) == 4 else torch.contiguous_format)
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


def op_cases(resolutions: Iterable[int], dtype_names: Iterable[str], config: TrainConfig = OFFICIAL) -> List[OpCase]:
    """The ops of G and D (and the loss) at each training resolution, with the widths and batch sizes of `config`
    (default: the official ones), in the order of `dtype_names`, then `resolutions`."""
    cases: Dict[str, OpCase] = {}
    for dtype_name in dtype_names:
        for res in resolutions:
            for block, op, c_in, c_out, size, kernel, options in _blocks_at(res, config):
                case = OpCase(block, op, res, config.minibatch[res], c_in, c_out, size, dtype_name, kernel,
                              tuple(sorted(options.items())))
                cases.setdefault(case.id, case)
    return list(cases.values())


def _blocks_at(res: int, config: TrainConfig):
    """(block, op, in_channels, out_channels, size, kernel, options) of one training resolution."""
    c, half, c4 = channels(res, config), channels(max(res // 2, 4), config), channels(4, config)
    g_conv = {"activation": "lrelu", "pixel_norm": True}
    blocks = [
        ("G toRGB", "equalized_conv2d", c, 3, res, 1, {"gain": 1.0}),
        ("D fromRGB", "equalized_conv2d", 3, c, res, 1, {"activation": "lrelu"}),
        ("D conv0", "equalized_conv2d", c, c, res, 3, {"activation": "lrelu"}),
        ("bias_act", "bias_act", c, c, res, 0, {"activation": "lrelu"}),
        ("pixel_norm", "pixel_norm", c, c, res, 0, {}),
        ("gradient_penalty", "gradient_penalty", 3, 3, res, 0, {}),
        ("D minibatch_stddev", "minibatch_stddev", c4, c4, 4, 0, {}),
    ]
    if res == 4:
        blocks += [
            ("G dense", "equalized_linear", c4, c4 * 16, 0, 0, {"gain": SQRT2 / 4}),
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
