"""The training-step table: images/s and peak memory of the trainer's own step (progan_fast.training.step:
TrainStep, the official preset's settings) per resolution and column, and the projected time of the official
schedule from those rates.

Columns: the plain-PyTorch reference networks in eager fp32, in bf16 autocast + channels_last, and with their
forward passes compiled by torch.compile (the gradient penalty's double backward through the eager D), then
progan_fast's networks on each accelerated backend that can run. Building and stepping a column needs no GPU;
timing it does (CUDA events).
"""
from __future__ import annotations

import dataclasses
import statistics
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
    """The reference columns, then progan_fast bf16 on each accelerated backend that can run here."""
    fast = [StepColumn(f"progan_fast {name} bf16", fast=True, backend=name, autocast_dtype=torch.bfloat16)
            for name in ACCELERATED if unavailable_reason(name, torch.device(device)) is None]
    return list(REFERENCE_COLUMNS) + fast


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
    its own optimizers, stepping on the shared reals."""

    def __init__(self, column: StepColumn, res: int, weights, reals: torch.Tensor, config: TrainConfig):
        device = reals.device
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
                             compile_forward=column.compile)
        self.gan.new_optimizers(res)
        self.column, self.res, self.reals = column, res, reals

    def step(self) -> None:
        """One training step (stable phase, alpha 1) on this column's backend."""
        with use_backend(self.column.backend):
            self.gan(self.reals, self.res)

    def timed_step(self) -> Tuple[float, int]:
        """(GPU seconds, peak bytes) of one step; peak counts this column's own state, not the other columns'."""
        gan = self.gan
        torch.cuda.synchronize()
        others = torch.cuda.memory_allocated() - state_bytes((gan.G, gan.D, gan.G_ema), (gan.g_opt, gan.d_opt))
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - others


def training_step_rows(res: int, columns: Sequence[StepColumn], warmup: int, rounds: int, device="cuda",
                       seed: int = 0, config: Optional[TrainConfig] = None) -> List[Dict[str, object]]:
    """Interleaved measurement of every column at one resolution: same process, same weights, same inputs.
    config: the step's settings and networks (default: the official preset up to `res`).

    A column that fails (build, compile, or a step) is reported with its error and leaves the others running.
    """
    config = config or official_config(res)
    batch = config.minibatch[res]
    weights, reals = shared_inputs(config, res, device, seed)
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
        runner = attempt(column.name, lambda: StepRunner(column, res, weights, reals, config))
        if runner is not None:
            runners[column.name] = runner
            for _ in range(warmup):
                attempt(column.name, runner.step)
                if column.name not in runners:  # the step failed
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


# ---------------------------------------------------------------------------------------------
# The official schedule and the projection

def official_schedule(total_images: int = OFFICIAL_TOTAL_IMAGES) -> Dict[int, int]:
    """Images shown per resolution in the official 1024 schedule (the official preset's phases: 600k at 4x4, then
    600k fade + 600k stable per resolution), the final resolution training on until `total_images`."""
    config = official_config()
    schedule = Schedule(FINAL_RESOLUTION, round(config.stable_kimg * 1000), round(config.fade_kimg * 1000),
                        config.minibatch)
    if schedule.total_images > total_images:
        raise ValueError(f"the phases need {schedule.total_images} images, more than the total of {total_images}")
    images = {res: sum(phase.length for phase in schedule.phases if phase.resolution == res)
              for res in schedule.resolutions}
    images[FINAL_RESOLUTION] += total_images - schedule.total_images
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
