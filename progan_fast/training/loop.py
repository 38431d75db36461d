"""The progressive training run (docs/progan.md, "Training"): which step comes next, ticks, evaluations,
checkpoints and stopping. The step itself is step.py's; what a checkpoint holds, run_state.py's; what a tick
reports and the image grids, ticks.py's.

Reliability: SIGINT and SIGTERM finish the current step (with several processes: the current tick), write a
checkpoint and return; `python -m progan_fast.train` then exits with 128 + the signal number (130, 143), so a
supervisor or shell sees an unfinished run. MAX_NONFINITE_STREAK consecutive steps with non-finite losses or
gradients, or running out of GPU memory, stop the run with TrainingStopped and write nothing more: the last
checkpoint stays the newest. Every file of the run folder is written under a temporary name and renamed; the
folder itself is claimed through run_folder.RunFolder (one trainer at a time, a new run only in a new or empty
folder) before anything is written into it.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from .. import cli
from ..backend import set_backend
from ..metrics.evaluate import generator_metrics
from . import checkpoint as ckpt
from . import run_state
from .config import TrainConfig, build_networks
from .data import RealImages, prepare_cache
from .distributed import Distributed
from .reporting import Reporter
from .run_folder import RunFolder, remove_leftovers
from .schedule import Phase
from .step import AUTOCAST_DTYPES, TrainStep
from .ticks import SampleGrids, Ticks

# Consecutive steps whose D or G update was skipped as non-finite before the run stops (checked at each tick).
MAX_NONFINITE_STREAK = 100
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def rate(segments) -> Optional[float]:
    """Images per second over timed segments ({"images", "seconds"}); None if they took no time."""
    seconds = sum(segment["seconds"] for segment in segments)
    return sum(segment["images"] for segment in segments) / seconds if seconds > 0 else None


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, out of memory); the message says why and what to do."""


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return amp


class Trainer:
    def __init__(self, config: TrainConfig, resume: Optional[Path] = None):
        self.config = config
        self.dist = Distributed.from_env(config.device)
        self.device = device = self.dist.device
        set_backend(config.backend)
        self.amp = resolve_amp(config.amp, device)
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark

        torch.manual_seed(config.seed)
        G, D = build_networks(config)
        for net in (G, D):
            net.to(device, memory_format=memory_format)
        self.dist.broadcast_parameters([G, D])
        self.gan = TrainStep(G, D, config, device, AUTOCAST_DTYPES[self.amp], self.dist)
        self.schedule = config.schedule()
        self.alpha = torch.zeros((), device=device)  # of fade-in steps, filled from the schedule
        self.ticks = Ticks(config.tick_kimg)
        self.last_checkpoint: Optional[Path] = resume
        self.stop_signal: Optional[int] = None
        self.shown = self.step = 0
        self.last_resolution, self.last_alpha = 4, 1.0  # of the latest step
        self.swd_results: Dict[str, dict] = {}
        self.ms_ssim_results: Dict[str, dict] = {}  # by resolution: {"fakes": ..., "reals": ...}

        self.folder: Optional[RunFolder] = None
        try:
            if resume is not None:
                with cli.activity(f"loading checkpoint {resume}"):
                    run_state.restore(self, resume)
            cache = prepare_cache(config.data, config.resolution, config.cache_dir, build=self.dist.is_main)
            self.run_dir = self._claim_run_dir(resume) if self.dist.is_main else None  # only rank 0 writes files
            self.data = RealImages(cache, config.seed, config.mirror, device, self.channels_last,
                                   self.dist.rank, self.dist.world_size)
            self.reporter = Reporter(self.run_dir, self.schedule.total_images, self.shown, config.progress,
                                     config.tensorboard)
            self.reporter.message(f"Run folder: {self.run_dir}  device: {device}  amp: {self.amp}  processes: "
                                  f"{self.dist.world_size}  images: {self.data.count}")
            if self.dist.is_main:
                self._tidy_run_dir(resume)
            self.grids = SampleGrids(config, G.latent_size, device, self.run_dir, self.reporter)
        except BaseException:  # nothing started: the process group and the run folder are released
            self.close()
            raise

    def _claim_run_dir(self, resume: Optional[Path]) -> Path:
        """Lock the run folder (RunFolder.claim says which one and refuses one that may not be used) and write
        the configuration into it."""
        config = self.config
        label = f"{Path(config.data).name if config.data else 'digits'}-{config.resolution}"
        self.folder = RunFolder.claim(config.out, resume, config.data, label)
        try:
            ckpt.write_bytes_durably(self.folder.path / "config.json", json.dumps(config.to_json(), indent=1).encode())
        except OSError as error:
            raise ValueError(f"cannot write to the run folder {str(self.folder.path)!r}: "
                             f"{cli.write_error_text(error)}; free some space or choose another --out") from None
        return self.folder.path

    def close(self) -> None:
        """Give up the run folder and leave the process group (after run(), or when starting failed)."""
        if self.folder is not None:
            self.folder.release()
            self.folder = None
        self.dist.close()

    def _tidy_run_dir(self, resume: Optional[Path]) -> None:
        """Remove what a killed run left half-written; on resume, set later checkpoints aside."""
        for name in remove_leftovers(self.run_dir):
            self.reporter.message(f"Removed {name}, left over from an interrupted run")
        if resume is None:
            return
        for old, new in ckpt.set_aside_newer(self.run_dir, self.step):
            self.reporter.message(f"warning: {old.name} is newer than the resumed checkpoint (damaged, or from "
                                  f"a later part of the run); moved to {new} so that this run continues cleanly")
        self.reporter.event({"event": "resume", "checkpoint": str(resume), "step": self.step,
                             "images_shown": self.shown})
        self.reporter.message(f"Resumed from {resume} at step {self.step}, {self.shown} images shown")

    def train_step(self, phase: Phase) -> None:
        """One step of `phase` on the next global batch of reals."""
        res = phase.resolution
        global_batch = self.schedule.minibatch[res] * self.dist.world_size
        self.last_resolution, self.last_alpha = res, phase.alpha(self.shown)
        # Stable phases pass the float 1.0, which skips the old branch; fades pass the device tensor.
        alpha = self.alpha.fill_(self.last_alpha) if phase.fading else 1.0
        self.gan(self.data.batch(self.shown, global_batch, res), res, alpha, images_shown=self.shown)
        self.shown += global_batch
        self.step += 1
        self.ticks.steps += 1

    # ------------------------------------------------------------------------------------------------
    # The run.

    def run(self) -> dict:
        """Train to the end of the schedule (or --max-steps, or a SIGINT/SIGTERM); the summary of the run.
        A stop by signal is summarized with "stopped_by_signal" (its name)."""
        with self._stop_on_signals(), cli.activity("training", f"continue from the last checkpoint with --resume "
                                                               f"{self.run_dir}"):
            try:
                self._train()
            finally:
                self.reporter.close()
        speeds = self.ticks.stage_speed
        summary = {"run_dir": str(self.run_dir), "images_shown": self.shown, "steps": self.step,
                   "img_per_sec_by_resolution": {res: rate(segments) for res, segments in speeds.items()
                                                 if rate(segments) is not None},
                   "img_per_sec_by_segment": {res: [rate([segment]) for segment in segments]
                                              for res, segments in speeds.items()},
                   "swd": self.swd_results, "ms_ssim": self.ms_ssim_results}
        if self.stop_signal is not None:
            summary["stopped_by_signal"] = signal.Signals(self.stop_signal).name
        if self.dist.is_main:
            ckpt.write_bytes_durably(self.run_dir / "summary.json", json.dumps(summary, indent=1).encode())
        return summary

    def _train(self) -> None:
        config = self.config
        if self.dist.is_main and self.shown == 0:
            self.grids.reals(self.data)
        self.ticks.restart(self.shown)
        while self.shown < self.schedule.total_images and (config.max_steps is None or self.step < config.max_steps):
            phase = self.schedule.phase_at(self.shown)
            if phase.resolution != self.gan.optimizer_resolution:
                self.gan.new_optimizers(phase.resolution)
                self.reporter.message(f"Training at {phase.resolution}x{phase.resolution}")
            self._guarded_step(phase)
            self.reporter.advance(self.schedule.minibatch[phase.resolution] * self.dist.world_size)
            resolution_done = self.shown >= self.schedule.resolution_end(phase.resolution)
            stopping = self.shown >= self.schedule.total_images or self.step == config.max_steps
            if self.ticks.due(self.shown) or resolution_done or stopping:
                self._tick(phase)
                if resolution_done:
                    self._evaluate(phase.resolution)
                if resolution_done or stopping or self.ticks.count % config.snapshot_ticks == 0:
                    self.save()
                if self._stop_requested_by_any_process():
                    break
                self.ticks.restart(self.shown)
            elif self.stop_signal is not None and self.dist.world_size == 1:
                break
        self.save()
        if self.stop_signal is not None:
            self.reporter.message(f"Stopped by {signal.Signals(self.stop_signal).name} at step {self.step} "
                                  f"({self.shown} images shown); continue with --resume {self.run_dir}")

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While training, SIGINT/SIGTERM ask for a clean stop; a second one acts as usual (it interrupts)."""
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set from there
            yield
            return
        previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

        def request_stop(number, frame):
            self.stop_signal = number
            for other in STOP_SIGNALS:
                signal.signal(other, previous[other])
            self.reporter.message(f"{signal.Signals(number).name}: stopping after this step and saving a "
                                  "checkpoint (send it again to interrupt at once)")

        for number in STOP_SIGNALS:
            signal.signal(number, request_stop)
        try:
            yield
        finally:
            for number in STOP_SIGNALS:
                signal.signal(number, previous[number])

    def _stop_requested_by_any_process(self) -> bool:
        if self.dist.world_size == 1:
            return self.stop_signal is not None
        # All processes must stop at the same step: they agree at ticks (one small all-reduce).
        requested = self.dist.average(torch.tensor(float(self.stop_signal is not None), device=self.device))
        if requested.item() > 0 and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        return self.stop_signal is not None

    def _guarded_step(self, phase: Phase) -> None:
        try:
            self.train_step(phase)
        except torch.OutOfMemoryError:
            res, batch = phase.resolution, self.schedule.minibatch[phase.resolution]
            group = min(self.config.mbstd_group_size, batch)
            smaller = batch // 2 // group * group or max(1, batch // 2)  # a multiple of the stddev group if any
            raise TrainingStopped(
                f"out of GPU memory in a training step at {res}x{res} with minibatch {batch} per process on "
                f"{self.device}. Nothing of the interrupted step was saved; the last checkpoint "
                f"({self.last_checkpoint or 'none yet'}) is intact. Use a smaller minibatch for this resolution, "
                f"e.g. --minibatch {res}:{smaller}" + (f" (a resumed run keeps its minibatch sizes: start a new "
                f"run with it, or resume with --resume {self.run_dir} on a GPU with more free memory)"
                                                       if self.run_dir else "")) from None

    def _tick(self, phase: Phase) -> None:
        record = self.ticks.end(self.gan, self.dist, phase.resolution, self.last_alpha, self.shown, self.step)
        streak = int(self.dist.average(self.gan.nonfinite_streak.clone()).item())
        if streak >= MAX_NONFINITE_STREAK:
            raise TrainingStopped(
                f"training diverged: the last {streak} steps all had non-finite (NaN/Inf) losses or gradients at "
                f"{phase.resolution}x{phase.resolution} (alpha {self.last_alpha:.3f}, {self.shown} images shown), so "
                f"their updates were skipped. Nothing more was saved; the last checkpoint "
                f"({self.last_checkpoint or 'none yet'}) is intact. Check the data for NaN/Inf, lower --lr, or use "
                f"--amp bf16/off instead of fp16, then start again or --resume from that checkpoint")
        self.reporter.record(record)
        if self.dist.is_main:
            self.grids.fakes(self.gan, phase.resolution, record["alpha"], self.shown)

    def _evaluate(self, res: int) -> None:
        """SWD of EMA samples against reals, and MS-SSIM of pairs of them, at the end of a resolution (rank 0)."""
        count = min(self.config.swd_images, self.data.count)
        if not self.dist.is_main or count < 1 or res < 8:
            return
        started = time.perf_counter()
        reals = self.data.evaluation_reals(count, res, self.config.seed)
        result = generator_metrics(self.gan.G_ema, reals, res, seed=self.config.seed,
                                   autocast_dtype=self.gan.autocast_dtype)
        swd = self.swd_results[str(res)] = result["swd_x1e3"]
        self.reporter.scalars("swd", swd, self.shown)
        self.reporter.event({"event": "swd", "resolution": res, "images": count, "images_shown": self.shown, **swd})
        text = (f"SWD x1e3 at {res}x{res} ({count} images): "
                + ", ".join(f"{key} {value:.2f}" for key, value in swd.items()))
        if "ms_ssim" in result:
            ms_ssim = self.ms_ssim_results[str(res)] = {"fakes": result["ms_ssim"], "reals": result["ms_ssim_reals"]}
            self.reporter.scalars("ms_ssim", ms_ssim, self.shown)
            self.reporter.event({"event": "ms_ssim", "resolution": res, "pairs": count // 2,
                                 "images_shown": self.shown, **ms_ssim})
            text += f"; MS-SSIM {ms_ssim['fakes']:.4f} (reals {ms_ssim['reals']:.4f})"
        self.reporter.message(f"{text}; {time.perf_counter() - started:.1f} s")

    def save(self) -> None:
        """A checkpoint of the run now (rank 0; once per step)."""
        if not self.dist.is_main or ckpt.checkpoint_path(self.run_dir, self.step).exists():
            return
        weights, tensors, state = run_state.contents(self)
        path = ckpt.save_checkpoint(self.run_dir, self.step, weights, tensors, state, self.config.keep_checkpoints)
        self.last_checkpoint = path
        self.reporter.message(f"Checkpoint {path}")
