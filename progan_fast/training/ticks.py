"""What a run reports as it goes: a tick every --tick-kimg images (the losses averaged over the tick's steps,
the speed, skipped updates) and the image grids of the run folder: reals.png once at the start, and
fakes-XXXXXXXXX.png (EMA samples of fixed latents, named by images shown) at every tick.

Ticks fall on multiples of --tick-kimg images shown, so a resumed run ticks where the uninterrupted one did. A
tick is where the device-side stats of the steps are read (one host read and, with several processes, one
all-reduce).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..images import image_grid, sample_images, save_png
from .checkpoint import replace_atomically
from .config import TrainConfig
from .data import RealImages
from .distributed import Distributed
from .reporting import Reporter
from .step import STAT_NAMES, TrainStep

GRID_CELL = 256  # largest cell of a sample grid, in pixels


class Ticks:
    """When the next tick falls, the steps and time since the last one, and the speed per resolution."""

    def __init__(self, tick_kimg: float):
        self.images = max(1, round(tick_kimg * 1000))  # between ticks
        self.count = 0  # ticks of the run so far
        self.steps = 0  # steps since the last tick
        # Per resolution, one {"images", "seconds"} of training per segment: each process (a resumed run is a new
        # one) times its own part of a resolution apart, so the summary shows the speed of every part.
        self.stage_speed: Dict[str, List[dict]] = {}
        self.timed_here: set = set()  # resolutions whose last segment this process started
        self.restart(0)

    def restart(self, shown: int) -> None:
        """Start timing the next tick (after the evaluation and checkpoint of the last one)."""
        self.next_at = (shown // self.images + 1) * self.images
        self.started, self.started_shown = time.perf_counter(), shown

    def due(self, shown: int) -> bool:
        return shown >= self.next_at

    def end(self, gan: TrainStep, dist: Distributed, resolution: int, alpha: float, shown: int,
            step: int) -> dict:
        """The log record of the tick that ends now; resets the step stats for the next one."""
        means = dist.average(gan.stats / max(self.steps, 1)).tolist()
        skipped = int(gan.skipped.item())
        seconds = time.perf_counter() - self.started
        images = shown - self.started_shown
        segments = self.stage_speed.setdefault(str(resolution), [])
        if resolution not in self.timed_here:
            segments.append({"images": 0, "seconds": 0.0})
            self.timed_here.add(resolution)
        speed = segments[-1]
        speed["images"] += images
        speed["seconds"] += seconds
        self.count += 1
        record = {"tick": self.count, "step": step, "images_shown": shown, "kimg": shown / 1000,
                  "resolution": resolution, "alpha": alpha, "img_per_sec": images / max(seconds, 1e-9),
                  "skipped_steps": skipped, **dict(zip(STAT_NAMES, means))}
        if gan.dynamic_loss_scale:
            record.update(loss_scale_d=gan.d_scaler.get_scale(), loss_scale_g=gan.g_scaler.get_scale())
        gan.stats.zero_()
        self.steps = 0
        return record


class SampleGrids:
    """The grids of a run folder, also shown in TensorBoard (rank 0 only)."""

    def __init__(self, config: TrainConfig, latent_size: int, device: torch.device, run_dir: Optional[Path],
                 reporter: Reporter):
        self.cols, rows = config.grid_shape
        self.final_resolution = config.resolution
        self.latents = torch.randn(self.cols * rows, latent_size,
                                   generator=torch.Generator().manual_seed(config.seed + 2)).to(device)
        self.run_dir, self.reporter = run_dir, reporter

    def reals(self, data: RealImages) -> None:
        """reals.png: the first reals of the run at the final resolution."""
        index, flip = data.indices(0, len(self.latents))
        reals = data.to_device(data.read(index, flip, self.final_resolution))
        self._write("reals.png", "reals", image_grid(reals, self.cols), 0)

    def fakes(self, gan: TrainStep, resolution: int, alpha: float, shown: int) -> None:
        """fakes-XXXXXXXXX.png: the EMA generator on the grid's latents, the same size at every resolution."""
        samples = sample_images(gan.G_ema, self.latents, resolution, alpha, gan.autocast_dtype)
        scale = max(1, min(self.final_resolution, GRID_CELL) // resolution)
        self._write(f"fakes-{shown:09d}.png", "samples", image_grid(samples, self.cols, scale), shown)

    def _write(self, name: str, tag: str, grid: np.ndarray, shown: int) -> None:
        replace_atomically(self.run_dir / name, lambda path: save_png(grid, path))
        self.reporter.image(tag, grid, shown)
