"""The training-step table: images/s and peak memory of the trainer's own step (progan_fast.training.step:
TrainStep, the official preset's settings) per resolution and column, in a stable phase (alpha 1) and while the
resolution fades in (alpha < 1: G's and D's old branches and the fade of the reals run too), and the projected
time of the official schedule from those rates.

Columns: the plain-PyTorch reference networks in eager fp32, in bf16 autocast + channels_last, and with their
forward passes compiled by torch.compile (the gradient penalty's double backward through the eager D), then
progan_fast's networks in bf16 autocast + channels_last (the trainer's defaults on a GPU) on each accelerated
backend that can run. Building and stepping a column needs no GPU; timing it uses CUDA events, or the host
clock in dry runs.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from progan_fast import models, reference
from progan_fast.backend import ACCELERATED, unavailable_reason, use_backend
from progan_fast.training.config import TrainConfig, build_networks, preset_config
from progan_fast.training.schedule import Schedule
from progan_fast.training.step import TrainStep

FINAL_RESOLUTION = 1024
OFFICIAL_TOTAL_IMAGES = 12_000_000  # docs/progan.md, "Training": 12M images for the default 1024 preset
FADE_ALPHA = 0.5  # of the timed fade-in steps: a device tensor, as the trainer passes it
PHASES = ("stable", "fade")  # row keys: step_ms, images_per_s, peak_GiB and fade_step_ms, ...


def official_config(resolution: int = FINAL_RESOLUTION) -> TrainConfig:
    """The official preset with networks up to `resolution`: the widths, minibatch sizes and step settings
    (Adam, penalty weight, drift, EMA) that the table times."""
    return dataclasses.replace(preset_config("official"), resolution=resolution)


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
    """The reference columns, then progan_fast bf16 + channels_last on each accelerated backend that can run
    here."""
    fast = [StepColumn(f"progan_fast {name} bf16 + channels_last", fast=True, backend=name,
                       autocast_dtype=torch.bfloat16, channels_last=True)
            for name in ACCELERATED if unavailable_reason(name, torch.device(device)) is None]
    return list(REFERENCE_COLUMNS) + fast


def phase_key(phase: str, key: str) -> str:
    """The row key of a measurement: `images_per_s` of the stable phase, `fade_images_per_s` of the fade."""
    return key if phase == "stable" else f"{phase}_{key}"


def merge_rows(rows: List[Dict[str, object]], new: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """rows with the measurements of `new` (another phase, or a new try) merged into the rows of the same
    resolution and column; a new error replaces the old one, a success clears it."""
    merged = {(row["resolution"], row["column"]): dict(row) for row in rows}
    for row in new:
        key = (row["resolution"], row["column"])
        merged.setdefault(key, {}).update(row)
    return list(merged.values())


def state_bytes(modules, optimizers) -> int:
    """Bytes held by parameters, their gradients and the optimizer state."""
    params = [p for module in modules for p in module.parameters()]
    tensors = params + [p.grad for p in params if p.grad is not None]
    tensors += [value for optimizer in optimizers for state in optimizer.state.values()
                for value in state.values() if torch.is_tensor(value)]
    return sum(t.numel() * t.element_size() for t in tensors)


def shared_inputs(config: TrainConfig, res: int, device, seed: int = 0):
    """((G weights, D weights), reals): what every column of a resolution starts from."""
    torch.manual_seed(seed)
    with torch.device(device):
        weights = tuple(net.state_dict() for net in build_networks(config, reference))
        reals = torch.rand(config.minibatch[res], 3, res, res) * 2 - 1
    return weights, reals


class StepRunner:
    """One column at one resolution: a TrainStep on its own networks (loaded with the shared initial weights) and
    its own optimizers, stepping on the shared reals. compile_backend: torch.compile's backend of the compile
    column (the trainer's own compile_forward uses the default, inductor)."""

    def __init__(self, column: StepColumn, res: int, weights, reals: torch.Tensor, config: TrainConfig,
                 compile_backend: str = "inductor"):
        device = reals.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark  # as the trainer sets it
        with torch.device(device):
            generator, discriminator = build_networks(config, models if column.fast else reference)
        generator.load_state_dict(weights[0])
        discriminator.load_state_dict(weights[1])
        if column.channels_last:
            generator.to(memory_format=torch.channels_last)
            discriminator.to(memory_format=torch.channels_last)
            reals = reals.contiguous(memory_format=torch.channels_last)
        if column.compile:
            torch._dynamo.reset()  # a fresh cache per resolution, so earlier sizes do not use up the recompile limit
        self.gan = TrainStep(generator, discriminator, config, device, column.autocast_dtype,
                             compile_forward=column.compile and compile_backend == "inductor")
        if column.compile and compile_backend != "inductor":
            self.gan.g_forward = torch.compile(generator, backend=compile_backend)
            self.gan.d_forward = torch.compile(discriminator, backend=compile_backend)
        self.gan.new_optimizers(res)
        self.column, self.res, self.reals = column, res, reals
        self.fade_alpha = torch.full((), FADE_ALPHA, device=device)

    def alpha(self, phase: str):
        """The trainer's alpha: the float 1.0 in stable phases, a device tensor during fades."""
        return 1.0 if phase == "stable" else self.fade_alpha

    def step(self, phase: str = "stable") -> None:
        """One training step in `phase` (stable, or fade: alpha FADE_ALPHA) on this column's backend."""
        with use_backend(self.column.backend):
            # Any count: the count sets only the EMA's decay, one float, at the same cost.
            self.gan(self.reals, self.res, self.alpha(phase), images_shown=0)

    def timed_step(self, phase: str = "stable", host_clock: bool = False) -> Tuple[float, Optional[int]]:
        """(seconds, peak bytes) of one step; peak counts this column's own state, not the other columns'.
        host_clock (dry runs, no GPU): the host's clock, and no peak (None)."""
        if host_clock:
            start = time.perf_counter()
            self.step(phase)
            return time.perf_counter() - start, None
        gan = self.gan
        torch.cuda.synchronize()
        others = torch.cuda.memory_allocated() - state_bytes((gan.G, gan.D, gan.G_ema), (gan.g_opt, gan.d_opt))
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.step(phase)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - others


def training_step_rows(res: int, columns: Sequence[StepColumn], warmup: int, rounds: int, device="cuda",
                       seed: int = 0, config: Optional[TrainConfig] = None, host_clock: bool = False,
                       compile_backend: str = "inductor", phases: Sequence[str] = PHASES) -> List[Dict[str, object]]:
    """Interleaved measurement of every column at one resolution in each of `phases` (stable, fade; 4x4 has no
    fade): same process, same weights, same inputs. config: the step's settings and networks (default: the
    official preset up to `res`); host_clock, compile_backend: see StepRunner.

    A column that fails (build, compile, or a step) is reported with its error and leaves the others running.
    """
    config = config or official_config(res)
    batch = config.minibatch[res]
    weights, reals = shared_inputs(config, res, device, seed)
    rows = {column.name: {"resolution": res, "batch": batch, "column": column.name, "error": None}
            for column in columns}
    runners: Dict[str, StepRunner] = {}

    def attempt(name: str, action: Callable[[], object]):
        try:
            return action()
        except Exception as error:  # reported in the table; the other columns go on
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            rows[name]["error"] = f"{type(error).__name__}: {first_line}"
            runners.pop(name, None)
            return None

    for column in columns:
        runner = attempt(column.name, lambda: StepRunner(column, res, weights, reals, config, compile_backend))
        if runner is not None:
            runners[column.name] = runner
    for phase in [phase for phase in phases if res > 4 or phase == "stable"]:  # 4x4 has nothing to fade in
        times = {name: [] for name in runners}
        peaks: Dict[str, Optional[int]] = {name: None for name in runners}
        for name, runner in list(runners.items()):
            for _ in range(warmup):
                attempt(name, lambda: runner.step(phase))
                if name not in runners:  # the step failed
                    break
        for _ in range(rounds):
            for name, runner in list(runners.items()):
                measured = attempt(name, lambda: runner.timed_step(phase, host_clock))
                if measured is not None:
                    times[name].append(measured[0])
                    peaks[name] = measured[1] if peaks[name] is None else max(peaks[name], measured[1])
        for name in runners:
            if times[name]:
                seconds = statistics.median(times[name])
                rows[name].update({phase_key(phase, "step_ms"): seconds * 1e3,
                                   phase_key(phase, "images_per_s"): batch / seconds,
                                   phase_key(phase, "peak_GiB"): None if peaks[name] is None
                                   else peaks[name] / 2 ** 30,
                                   phase_key(phase, "steps_timed"): len(times[name])})
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# The official schedule and the projection

def _official_phases(total_images: int) -> Tuple[Schedule, int]:
    """(the official preset's phases up to 1024, the images the final resolution trains on after them)."""
    config = official_config()
    schedule = Schedule(FINAL_RESOLUTION, round(config.stable_kimg * 1000), round(config.fade_kimg * 1000),
                        config.minibatch)
    if schedule.total_images > total_images:
        raise ValueError(f"the phases need {schedule.total_images} images, more than the total of {total_images}")
    return schedule, total_images - schedule.total_images


def official_schedule(total_images: int = OFFICIAL_TOTAL_IMAGES) -> Dict[int, int]:
    """Images shown per resolution in the official 1024 schedule (the official preset's phases: 600k at 4x4, then
    600k fade + 600k stable per resolution), the final resolution training on until `total_images`."""
    schedule, extra = _official_phases(total_images)
    images = {res: sum(phase.length for phase in schedule.phases if phase.resolution == res)
              for res in schedule.resolutions}
    images[FINAL_RESOLUTION] += extra
    return images


def official_fade_images(total_images: int = OFFICIAL_TOTAL_IMAGES) -> Dict[int, int]:
    """Of official_schedule's images, those shown while each resolution fades in."""
    schedule, _ = _official_phases(total_images)
    return {res: sum(phase.length for phase in schedule.phases if phase.resolution == res and phase.fading)
            for res in schedule.resolutions if res > 4}


def project_schedule_hours(images_per_s: Dict[int, float], schedule: Dict[int, int],
                           fade_images_per_s: Optional[Dict[int, float]] = None,
                           fade_images: Optional[Dict[int, int]] = None) -> Optional[float]:
    """Wall time of the schedule (images per resolution) from measured per-resolution rates: its fade_images
    (per resolution) at fade_images_per_s where that was measured, the rest at the stable rate. None when a
    resolution's stable rate was not measured."""
    if any(not images_per_s.get(res) for res in schedule):
        return None
    fade_images, fade_images_per_s = fade_images or {}, fade_images_per_s or {}
    seconds = 0.0
    for res, images in schedule.items():
        fading = fade_images.get(res, 0)
        seconds += (images - fading) / images_per_s[res] + fading / (fade_images_per_s.get(res) or images_per_s[res])
    return seconds / 3600


def _rates_cell(row: Dict[str, object]) -> str:
    """images/s and peak memory of a row's stable and fade measurements, and its error if it failed."""
    parts = []
    for phase in PHASES:
        rate, peak = row.get(phase_key(phase, "images_per_s")), row.get(phase_key(phase, "peak_GiB"))
        if rate:
            label = "" if phase == "stable" else f"{phase} "
            parts.append(f"{label}{rate:.1f} img/s" + (f", {peak:.2f} GiB" if peak is not None else ""))
    if row["error"]:
        parts.append(f"failed: {row['error']}")
    return "; ".join(parts) or "not run"


def training_table(rows: List[Dict[str, object]]) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
    """(table rows: one per resolution with images/s and peak GiB per column, stable and fading; projection
    rows per column)."""
    columns = list(dict.fromkeys(row["column"] for row in rows))
    by_res: Dict[int, Dict[str, object]] = {}
    for row in rows:
        line = by_res.setdefault(row["resolution"], {"resolution": row["resolution"], "batch": row["batch"]})
        line[row["column"]] = _rates_cell(row)
    schedule, fade_images = official_schedule(), official_fade_images()
    projections = []
    for column in columns:
        own = [row for row in rows if row["column"] == column]
        fade_rates = {row["resolution"]: row.get(phase_key("fade", "images_per_s")) for row in own}
        hours = project_schedule_hours({row["resolution"]: row.get("images_per_s") for row in own}, schedule,
                                       fade_rates, fade_images)
        projections.append({"column": column, "projected_12M_schedule_hours": hours,
                            "projected_days": hours / 24 if hours else None,
                            "fades_at_measured_rate": f"{sum(bool(fade_rates.get(res)) for res in fade_images)} "
                                                      f"of {len(fade_images)}"})
    baseline = projections[0]["projected_12M_schedule_hours"] if projections else None
    for projection in projections:
        hours = projection["projected_12M_schedule_hours"]
        projection["speedup_vs_first_column"] = baseline / hours if baseline and hours else None
    return [by_res[res] for res in sorted(by_res)], projections
