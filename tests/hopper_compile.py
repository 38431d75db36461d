"""Compiles every Triton kernel launch of a ProGAN training step for Hopper (sm_90) ahead of time, on a machine
without a GPU, and checks what the interpreter cannot: that each kernel compiles, fits the shared memory of an
sm_90 multiprocessor, keeps its registers without spilling, and that the conv kernel's 16-bit products run on
Hopper's tensor-core instruction (wgmma) rather than the older mma.sync.

The launches are the real ones: the trainer's own step (`progan_fast.training.step.TrainStep`: D step with the
gradient penalty's double backward, G step, EMA) runs on the triton backend with the official preset's widths
and batch sizes at every resolution, stable and fading, in fp32 (exact "ieee" products, and "tf32" as torch's
convolutions default to on a GPU), bf16 and fp16 autocast, channels_last (the trainer's layout on a GPU) and,
in bf16, NCHW. Nothing is computed: CPU tensors stand in for CUDA tensors, every torch op outside progan_fast's
custom ops runs on shapes alone (`ShapesOnly`), and a stand-in driver reports an sm_90 GPU, so that Triton binds
and specialises each launch exactly as on that GPU (integer arguments equal to 1 or divisible by 16, 16-byte
aligned pointers) and hands the result to this script instead of launching it. Each distinct binary is then
compiled with `triton.compile` for `GPUTarget("cuda", 90, 64)`; ptxas (shipped with Triton) reports registers
and spills, Triton's metadata the shared memory.

    python tests/hopper_compile.py [--resolutions 4,8,...] [--modes fp32-ieee,fp32-tf32,bf16,fp16,bf16-nchw]
                                   [--report FILE] [--jobs N]

Prints a table (kernel, dtype, configuration, shared memory, registers, spills, wgmma) and exits with 1 when a
check fails. Run it with the Python whose Triton should be checked (tests/test_hopper_compile.py runs it for
this environment's Triton and for the GPU machine's stack). TRITON_INTERPRET must not be set: it turns every
kernel into an interpreted function that cannot be compiled.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import os
import re
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

if __name__ == "__main__":  # before triton is imported (the tests import this module for its checks)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("hopper_compile: unset TRITON_INTERPRET (compiled kernels are needed, not interpreted ones)")
    # A fresh cache: a cached kernel would skip ptxas, whose report gives the registers and spills.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="progan-fast-sm90-")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's default, said explicitly (3.9 warns otherwise)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

import torch  # noqa: E402
import triton  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 64)
SM90_MAX_SHARED_BYTES = 227 * 1024  # per thread block (opt-in maximum of compute capability 9.0)
RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
# name -> (autocast dtype, fp32 product precision on a GPU, channels_last)
MODES = {
    "fp32-ieee": (None, "ieee", True),
    "fp32-tf32": (None, "tf32", True),
    "bf16": (torch.bfloat16, None, True),
    "fp16": (torch.float16, None, True),
    "bf16-nchw": (torch.bfloat16, None, False),
}
WGMMA_KERNELS = ("_conv_fwd_kernel",)  # kernels whose 16-bit tl.dot must run on wgmma
WGMMA_MIN_ROWS = 64  # wgmma multiplies 64-row tiles per warpgroup: smaller tiles cannot use it


class HopperDriver:
    """Stands in for Triton's CUDA driver: reports an sm_90 GPU; nothing is launched (see `record_launch`)."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET

    def get_active_torch_device(self):
        return torch.device("cpu")


@dataclasses.dataclass
class Launch:
    """One distinct binary: a kernel with its specialisation, constexprs and options, and where it was launched."""

    kernel: JITFunction
    signature: dict
    constexprs: dict
    options: object
    attrs: dict
    where: List[str] = dataclasses.field(default_factory=list)

    def constexpr(self, name: str):
        return self.constexprs.get((self.kernel.arg_names.index(name),))

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def dtype(self) -> str:
        """The data dtype: of the first pointer argument that is not fp32 (else fp32), with the fp32 products'
        precision where the kernel has one."""
        pointers = [t[1:] for t in self.signature.values() if isinstance(t, str) and t.startswith("*")]
        dtype = next((t for t in pointers if t != "fp32"), "fp32")
        precision = self.constexpr("DOT_PRECISION") if "DOT_PRECISION" in self.kernel.arg_names else None
        return f"{dtype} {precision}" if dtype == "fp32" and precision else dtype

    @property
    def config(self) -> str:
        values = {self.kernel.arg_names[path[0]]: value for path, value in self.constexprs.items()
                  if self.kernel.arg_names[path[0]].isupper()}
        flags = " ".join(f"{name}={value}" for name, value in values.items()
                         if name != "DOT_PRECISION" and not name.startswith("BLOCK"))
        blocks = "x".join(str(value) for name, value in values.items() if name.startswith("BLOCK"))
        return (f"{blocks} w{self.options.num_warps} s{self.options.num_stages}" + (f" {flags}" if flags else "")
                ).strip()

    @property
    def specialisation(self) -> str:
        """The integer arguments Triton specialised: equal to 1 (folded into the code), and how many of the others
        it knows to be divisible by 16 (aligned addresses, vector loads)."""
        ones = [self.kernel.arg_names[path[0]] for path, value in self.constexprs.items()
                if not self.kernel.arg_names[path[0]].isupper()]
        integers = [(index,) for index, kind in enumerate(self.signature.values()) if kind in ("i32", "i64")]
        divisible = sum(1 for path in integers if ["tt.divisibility", 16] in self.attrs.get(path, []))
        return f"=1: {','.join(ones) or '-'}; %16: {divisible}/{len(integers)}"


LAUNCHES: Dict[Tuple[str, str], Launch] = {}


@dataclasses.dataclass
class RecordingState:
    where: str = "?"  # the resolution, mode and phase of the step being recorded
    fp32_precision: str = "tf32"  # torch.backends.cudnn.conv.fp32_precision of the GPU being stood in for


RECORDING = RecordingState()


def record_launch(self, key, signature, device, constexprs, options, attrs, warmup):
    """Replaces JITFunction._do_compile (same signature in Triton 3.6 to 3.9): keeps what would be compiled and
    returns None, upon which JITFunction.run returns without launching."""
    launch = LAUNCHES.setdefault((self.fn.__qualname__, str(key)), Launch(self, signature, constexprs, options,
                                                                          attrs))
    if RECORDING.where not in launch.where:
        launch.where.append(RECORDING.where)
    return None


def _meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, torch.device) and value.type == "cpu":
        return torch.device("meta")
    return value


def _stand_in(value):
    if isinstance(value, torch.Tensor) and value.device.type == "meta":
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="cpu")
    return value


class ShapesOnly(TorchDispatchMode):
    """progan_fast's custom ops run as they are (their Triton launches are recorded); every other op is evaluated
    on meta tensors and answered with uninitialised CPU tensors of the same shape and strides, views as views
    (their offsets matter for the alignment Triton specialises on), in-place ops as no-ops, host reads as 1."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "progan_fast":
            return func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            return 1  # e.g. GradScaler's found_inf (1: skip the optimizer step, which launches nothing of ours)
        returns = [r.alias_info for r in func._schema.returns]
        if any(info is not None and info.is_write for info in returns):  # in place, or out=
            written = [value for value, argument in zip(args, func._schema.arguments)
                       if argument.alias_info is not None and argument.alias_info.is_write]
            written += [kwargs[a.name] for a in func._schema.arguments
                        if a.name in kwargs and a.alias_info is not None and a.alias_info.is_write]
            return written[0] if len(returns) == 1 else tuple(written)
        if any(info is not None for info in returns):  # a view: no data is touched
            return func(*args, **kwargs)
        return tree_map(_stand_in, func(*tree_map(_meta, args), **tree_map(_meta, kwargs)))


def _patch_for_recording() -> None:
    from progan_fast import backend
    from progan_fast.kernels import equalized_conv

    driver.set_active(HopperDriver())
    JITFunction._do_compile = record_launch
    backend._UNAVAILABLE["triton"] = lambda device: None  # the CPU tensors stand in for CUDA tensors
    # For fp32, what dot_precision answers for a CUDA tensor under the GPU's conv precision setting.
    cpu_answer = equalized_conv.dot_precision
    equalized_conv.dot_precision = lambda x: RECORDING.fp32_precision if x.dtype == torch.float32 else cpu_answer(x)


def record_training_steps(resolutions, modes) -> None:
    """The launches of a stable and a fading training step (official preset) at each resolution and mode."""
    from progan_fast import use_backend
    from progan_fast.training.config import build_networks, preset_config
    from progan_fast.training.step import TrainStep

    _patch_for_recording()
    for res in resolutions:
        config = dataclasses.replace(preset_config("official"), resolution=res)
        torch.manual_seed(0)
        generator, discriminator = build_networks(config)
        for mode in modes:
            autocast_dtype, precision, channels_last = MODES[mode]
            RECORDING.fp32_precision = precision or "tf32"
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            G, D = generator.to(memory_format=memory_format), discriminator.to(memory_format=memory_format)
            gan = TrainStep(G, D, config, torch.device("cpu"), autocast_dtype)
            gan.new_optimizers(res)
            reals = torch.empty(config.minibatch[res], 3, res, res).contiguous(memory_format=memory_format)
            phases = [("stable", 1.0)] + ([("fade", torch.full((), 0.5))] if res > 4 else [])
            with use_backend("triton"), ShapesOnly():
                for phase, alpha in phases:
                    RECORDING.where = f"{res} {mode} {phase}"
                    gan(reals, res, alpha, images_shown=0)


@dataclasses.dataclass
class Compiled:
    error: Optional[str] = None
    shared: int = 0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    wgmma: bool = False
    mma_sync: bool = False
    seconds: float = 0.0


def compile_launch(index: int) -> Compiled:
    launch = list(LAUNCHES.values())[index]
    start = time.perf_counter()
    log = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed after each compile
    try:
        with contextlib.redirect_stdout(log):
            source = triton.compiler.ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
            kernel = triton.compile(source, target=TARGET, options=launch.options.__dict__)
    except Exception as error:  # noqa: BLE001 (every compile error is a finding)
        return Compiled(error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}",
                        seconds=time.perf_counter() - start)
    report = log.getvalue()
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    if registers is None or spills is None:
        return Compiled(error=f"no ptxas report in the compile output: {report[-300:]!r}")
    ptx = kernel.asm["ptx"]
    return Compiled(shared=kernel.metadata.shared, registers=int(registers.group(1)),
                    spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
                    wgmma="wgmma.mma_async" in ptx, mma_sync="mma.sync" in ptx,
                    seconds=time.perf_counter() - start)


def findings(launch: Launch, compiled: Compiled) -> List[str]:
    """What fails the check for one binary."""
    if compiled.error:
        return [f"compile error: {compiled.error}"]
    problems = []
    if compiled.shared > SM90_MAX_SHARED_BYTES:
        problems.append(f"{compiled.shared} B of shared memory (sm_90 allows {SM90_MAX_SHARED_BYTES})")
    if compiled.spill_stores or compiled.spill_loads:
        problems.append(f"register spills ({compiled.spill_stores} B stored, {compiled.spill_loads} B loaded)")
    if (launch.name in WGMMA_KERNELS and launch.dtype in ("bf16", "fp16") and not compiled.wgmma):
        rows = launch.constexpr("BLOCK_M")
        reason = (f"a {rows}-row tile cannot use it (at least {WGMMA_MIN_ROWS})" if rows < WGMMA_MIN_ROWS
                  else "mma.sync instead" if compiled.mma_sync else "no tensor-core instruction at all")
        problems.append(f"16-bit products not on wgmma: {reason}")
    return problems


def unchecked_kernels() -> List[str]:
    """The @triton.jit functions of progan_fast.kernels that no recorded launch runs or calls (directly or through
    another jit function): each would escape this check."""
    import importlib
    import pkgutil

    import progan_fast.kernels as package

    functions = {}
    for module in pkgutil.iter_modules(package.__path__):
        loaded = importlib.import_module(f"{package.__name__}.{module.name}")
        functions.update({value: loaded for value in vars(loaded).values() if isinstance(value, JITFunction)})
    reached = {launch.kernel for launch in LAUNCHES.values()}
    pending = list(reached)
    while pending:  # the jit functions that a reached one names
        fn = pending.pop()
        for name in fn.fn.__code__.co_names:
            called = fn.fn.__globals__.get(name)
            if isinstance(called, JITFunction) and called not in reached:
                reached.add(called)
                pending.append(called)
    return sorted(f"{functions[fn].__name__}.{fn.fn.__name__}" for fn in functions if fn not in reached)


def _where(places: List[str]) -> str:
    """'4-1024 bf16 stable+fade' style summary of where a binary was launched."""
    resolutions = sorted({int(p.split()[0]) for p in places})
    modes = sorted({p.split()[1] for p in places}, key=list(MODES).index)
    phases = sorted({p.split()[2] for p in places})
    res = (f"{resolutions[0]}" if len(resolutions) == 1 else
           f"{resolutions[0]}-{resolutions[-1]}" if len(resolutions) == RESOLUTIONS.index(resolutions[-1])
           - RESOLUTIONS.index(resolutions[0]) + 1 else ",".join(map(str, resolutions)))
    return f"{res} {'/'.join(modes)} {'+'.join(phases)}"


def table(rows: List[Tuple[Launch, Compiled]]) -> str:
    header = ("| kernel | dtype | config (BLOCKs, warps, stages, flags) | integer specialisation | shared KiB | "
              "registers | spills B (store/load) | wgmma | launched at (res, mode, phase) | check |")
    lines = [header, "|" + "---|" * 10]
    for launch, compiled in sorted(rows, key=lambda r: (r[0].name, r[0].dtype, r[0].config)):
        problems = findings(launch, compiled)
        if compiled.error:
            cells = ["-", "-", "-", "-"]
        else:
            cells = [f"{compiled.shared / 1024:.1f}", str(compiled.registers),
                     f"{compiled.spill_stores}/{compiled.spill_loads}",
                     "yes" if compiled.wgmma else ("mma.sync" if compiled.mma_sync else "no")]
        lines.append(f"| {launch.name} | {launch.dtype} | {launch.config} | {launch.specialisation} | "
                     + " | ".join(cells)
                     + f" | {_where(launch.where)} | {'; '.join(problems) or 'ok'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--report", help="also write the table (markdown) to this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES] + [r for r in resolutions if r not in RESOLUTIONS]
    if unknown:
        parser.error(f"unknown modes or resolutions {unknown}; modes: {', '.join(MODES)}; resolutions: "
                     f"{', '.join(map(str, RESOLUTIONS))}")
    start = time.perf_counter()
    record_training_steps(resolutions, modes)
    recorded = time.perf_counter() - start
    # fork: the workers inherit the recorded launches (JIT functions are not picklable)
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        compiled = list(pool.map(compile_launch, range(len(LAUNCHES))))
    rows = list(zip(LAUNCHES.values(), compiled))
    failed = [(launch, problems) for launch, c in rows if (problems := findings(launch, c))]
    unchecked = unchecked_kernels()
    text = table(rows)
    summary = (f"\nTriton {triton.__version__}, torch {torch.__version__}, target sm_90: {len(rows)} binaries "
               f"({len(resolutions)} resolutions x {len(modes)} modes, recorded in {recorded:.0f} s, compiled in "
               f"{time.perf_counter() - start - recorded:.0f} s with {args.jobs} processes); "
               f"{len(failed)} failed the checks; kernels never launched: {', '.join(unchecked) or 'none'}")
    print(text + summary)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as report:
            report.write(text + "\n" + summary.strip() + "\n")
    for launch, problems in failed:
        print(f"FAILED {launch.name} {launch.dtype} {launch.config} ({_where(launch.where)}): {'; '.join(problems)}",
              file=sys.stderr)
    # A partial sweep (fewer resolutions or modes) need not reach every kernel.
    incomplete = bool(unchecked) and len(resolutions) == len(RESOLUTIONS) and len(modes) == len(MODES)
    if incomplete:
        print(f"FAILED: not launched by any training step, so not checked: {', '.join(unchecked)}", file=sys.stderr)
    return 1 if failed or incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
