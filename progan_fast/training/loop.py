"""The progressive WGAN-GP training loop (docs/progan.md, "Training").

Per step: one D step (WGAN-GP, lambda 10, drift 0.001 * D(real)^2), one G step, then the EMA of G (beta 0.999).
Adam (lr 0.001, betas (0, 0.99), eps 1e-8) for both, new optimizer state at each new resolution.

No host reads inside a step: alpha lives in a device tensor that is filled from the host-side schedule, losses
and skipped-step counts accumulate on the device and are read once per tick. Mixed precision: autocast in bf16
or fp16; each network has its own GradScaler (dynamic loss scaling for fp16, a fixed scale of 1 otherwise) that
skips and counts non-finite steps. The gradient penalty's input gradient is taken from the scaled score and
unscaled before its norm.

All random draws (latents, the mixing factor of the penalty) come from one generator seeded identically on every
process; each process draws the global batch and keeps its own slice, so a multi-process run equals a
single-process run of the same global batch, and a resumed run continues exactly where it stopped.

Reliability: SIGINT and SIGTERM finish the current step (with several processes: the current tick), write a
checkpoint and return; `python -m progan_fast.train` then exits with 128 + the signal number (130, 143), so a
supervisor or shell sees an unfinished run. MAX_NONFINITE_STREAK consecutive steps with non-finite losses or
gradients, or running out of GPU memory, stop the run with TrainingStopped and write nothing more: the last
checkpoint stays the newest. Every file of the run folder is written under a temporary name and renamed.
"""
from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .. import functional as PF
from ..backend import set_backend
from ..metrics.swd import swd, to_uint8
from . import checkpoint as ckpt
from .config import TrainConfig, build_networks
from .data import RealImages, prepare_cache
from .distributed import Distributed
from .reporting import Reporter, image_grid, save_png
from .schedule import Phase, Schedule

STAT_NAMES = ("d_loss", "g_loss", "gradient_penalty", "d_real", "d_fake")
SAMPLE_BATCH = 64
GRID_CELL = 256  # largest cell of a sample grid, in pixels
# Consecutive steps whose D or G update was skipped as non-finite before the run stops (checked at each tick).
MAX_NONFINITE_STREAK = 100
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, out of memory); the message says why and what to do."""


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return amp


def new_run_dir(root: Path, label: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in root.iterdir() if p.name[:5].isdigit()]
    return root / f"{max(numbers, default=-1) + 1:05d}-{label}"


class Trainer:
    def __init__(self, config: TrainConfig, resume: Optional[Path] = None):
        self.config = config
        self.dist = Distributed.from_env(config.device)
        self.device = device = self.dist.device
        set_backend(config.backend)
        self.amp = resolve_amp(config.amp, device)
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark

        torch.manual_seed(config.seed)
        self.G, self.D = build_networks(config)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        for net in (self.G, self.D, self.G_ema):
            net.to(device, memory_format=self.memory_format)
        self.dist.broadcast_parameters([self.G, self.D, self.G_ema])
        self.g_params, self.ema_params = list(self.G.parameters()), list(self.G_ema.parameters())
        self.schedule = Schedule(config.resolution, round(config.stable_kimg * 1000), round(config.fade_kimg * 1000),
                                 config.minibatch)

        self.rng = torch.Generator(device).manual_seed(config.seed + 1)
        self.alpha = torch.zeros((), device=device)
        self.one = torch.ones((), device=device)
        self.stats = torch.zeros(len(STAT_NAMES), device=device)
        self.skipped = torch.zeros((), device=device)
        self.nonfinite_streak = torch.zeros((), device=device)  # consecutive steps with a skipped update
        self.last_checkpoint: Optional[Path] = resume
        self.stop_signal: Optional[int] = None
        self.shown = self.step = self.ticks = self.tick_steps = 0
        self.optimizer_resolution: Optional[int] = None
        self.last_resolution, self.last_alpha = 4, 1.0  # of the latest step
        self.stage_speed: Dict[str, dict] = {}
        self.swd_results: Dict[str, dict] = {}
        self.d_scaler, self.g_scaler = self._scaler(), self._scaler()

        if resume is not None:
            self._load(resume)
        cache = prepare_cache(config.data, config.resolution, config.cache_dir, build=self.dist.is_main)
        self.run_dir = self._make_run_dir(resume) if self.dist.is_main else None  # only rank 0 writes files
        self.data = RealImages(cache, config.seed, config.mirror, device, self.channels_last,
                               self.dist.rank, self.dist.world_size)
        self.reporter = Reporter(self.run_dir, self.schedule.total_images, self.shown, config.progress,
                                 config.tensorboard)
        self.reporter.message(f"Run folder: {self.run_dir}  device: {device}  amp: {self.amp}  processes: "
                              f"{self.dist.world_size}  images: {self.data.count}")
        if self.dist.is_main:
            self._tidy_run_dir(resume)
        grid_count = config.grid_shape[0] * config.grid_shape[1]
        self.grid_latents = torch.randn(grid_count, self.G.latent_size,
                                        generator=torch.Generator().manual_seed(config.seed + 2)).to(device)

    def _make_run_dir(self, resume: Optional[Path]) -> Path:
        config = self.config
        if config.out:
            run_dir = Path(config.out)
        elif resume is not None:
            run_dir = ckpt.run_dir_of(resume)
        else:
            run_dir = new_run_dir(Path("runs"), f"{Path(config.data).name if config.data else 'digits'}-"
                                                f"{config.resolution}")
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_bytes_durably(run_dir / "config.json", json.dumps(config.to_json(), indent=1).encode())
        return run_dir

    def _tidy_run_dir(self, resume: Optional[Path]) -> None:
        """Remove what a killed run left half-written; on resume, set later checkpoints aside."""
        for name in ckpt.remove_leftovers(self.run_dir):
            self.reporter.message(f"Removed {name}, left over from an interrupted run")
        if resume is None:
            return
        for old, new in ckpt.set_aside_newer(self.run_dir, self.step):
            self.reporter.message(f"warning: {old.name} is newer than the resumed checkpoint (damaged, or from "
                                  f"a later part of the run); moved to {new} so that this run continues cleanly")
        self.reporter.event({"event": "resume", "checkpoint": str(resume), "step": self.step,
                             "images_shown": self.shown})
        self.reporter.message(f"Resumed from {resume} at step {self.step}, {self.shown} images shown")

    # ------------------------------------------------------------------------------------------------
    # Pieces of a step.

    def _scaler(self) -> torch.amp.GradScaler:
        if self.amp == "fp16":  # docs/progan.md: the official code starts at 2**6 and doubles about every 2000 good steps
            return torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 6, growth_interval=2000)
        # A fixed scale of 1 (it only halves after a non-finite step): the scaler then just skips and counts them.
        return torch.amp.GradScaler(self.device.type, init_scale=1.0, growth_interval=2 ** 31 - 1)

    def _autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _new_optimizers(self, resolution: int) -> None:
        config = self.config
        options = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps)
        if self.device.type == "cuda":
            options["fused"] = True
        self.g_opt = torch.optim.Adam(self.G.parameters(), **options)
        self.d_opt = torch.optim.Adam(self.D.parameters(), **options)
        self.optimizer_resolution = resolution

    def _apply(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               net: torch.nn.Module) -> torch.Tensor:
        """Step the optimizer unless the gradients are non-finite; the device-side count of skipped updates."""
        self.dist.average_gradients(net.parameters())
        scaler.step(optimizer)
        # Device-side 0/1 flags of this step (private but stable GradScaler API); read at the next tick.
        skipped = sum(found_inf.to(self.skipped.device)
                      for found_inf in scaler._found_inf_per_device(optimizer).values())
        self.skipped += skipped
        scaler.update()
        return skipped

    def _draw(self, global_batch: int, *shape: int, uniform: bool = False) -> torch.Tensor:
        """This process's slice of a global-batch draw (identical on every process)."""
        draw = torch.rand if uniform else torch.randn
        values = draw(global_batch, *shape, generator=self.rng, device=self.device)
        share = global_batch // self.dist.world_size
        return values[self.dist.rank * share:(self.dist.rank + 1) * share]

    def _d_step(self, reals: torch.Tensor, z: torch.Tensor, u: torch.Tensor, res: int, alpha) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            fakes = self.G(z, res, alpha)
        with self._autocast():
            d_real = self.D(reals, alpha).float()
            d_fake = self.D(fakes, alpha).float()
            mixed = torch.lerp(reals, fakes.to(reals.dtype), u).requires_grad_(True)
            d_mixed = self.D(mixed, alpha).float()
        (scaled_grad,) = torch.autograd.grad(self.d_scaler.scale(d_mixed.sum()), mixed, create_graph=True)
        penalty = PF.gradient_penalty(scaled_grad / self.d_scaler.scale(self.one), weight=self.config.gp_weight)
        loss = d_fake.mean() - d_real.mean() + penalty + self.config.drift * d_real.square().mean()
        self.d_opt.zero_grad(set_to_none=True)
        self.d_scaler.scale(loss).backward()
        skipped = self._apply(self.d_opt, self.d_scaler, self.D)
        return torch.stack([loss, penalty, d_real.mean(), d_fake.mean(), skipped]).detach()

    def _g_step(self, z: torch.Tensor, res: int, alpha) -> torch.Tensor:
        self.D.requires_grad_(False)
        with self._autocast():
            loss = -self.D(self.G(z, res, alpha), alpha).float().mean()
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(loss).backward()
        self.D.requires_grad_(True)
        skipped = self._apply(self.g_opt, self.g_scaler, self.G)
        return torch.stack([loss.detach(), skipped])

    def train_step(self, phase: Phase) -> None:
        res = phase.resolution
        global_batch = self.schedule.minibatch[res] * self.dist.world_size
        # Stable phases pass the float 1.0, which skips the old branch; fades pass the device tensor.
        self.last_resolution, self.last_alpha = res, phase.alpha(self.shown)
        alpha = self.alpha.fill_(self.last_alpha) if phase.fading else 1.0
        z_d = self._draw(global_batch, self.G.latent_size)
        u = self._draw(global_batch, 1, 1, 1, uniform=True)
        z_g = self._draw(global_batch, self.G.latent_size)
        reals = self.data.batch(self.shown, global_batch, res)
        if phase.fading:
            reals = PF.fade_downsample(reals, alpha)
        d_loss, penalty, d_real, d_fake, d_skipped = self._d_step(reals, z_d, u, res, alpha)
        g_loss, g_skipped = self._g_step(z_g, res, alpha)
        torch._foreach_lerp_(self.ema_params, self.g_params, 1.0 - self.config.ema_beta)
        self.nonfinite_streak.add_(1).mul_((d_skipped + g_skipped).clamp(max=1))
        self.stats += torch.stack([d_loss, g_loss, penalty, d_real, d_fake])
        self.shown += global_batch
        self.step += 1
        self.tick_steps += 1

    # ------------------------------------------------------------------------------------------------
    # The run.

    def run(self) -> dict:
        """Train to the end of the schedule (or --max-steps, or a SIGINT/SIGTERM); the summary of the run.
        A stop by signal is summarized with "stopped_by_signal" (its name)."""
        with self._stop_on_signals():
            try:
                self._train()
            finally:
                self.reporter.close()
        summary = {"run_dir": str(self.run_dir), "images_shown": self.shown, "steps": self.step,
                   "img_per_sec_by_resolution": {res: s["images"] / s["seconds"] for res, s in self.stage_speed.items()
                                                 if s["seconds"] > 0}, "swd": self.swd_results}
        if self.stop_signal is not None:
            summary["stopped_by_signal"] = signal.Signals(self.stop_signal).name
        if self.dist.is_main:
            ckpt.write_bytes_durably(self.run_dir / "summary.json", json.dumps(summary, indent=1).encode())
        return summary

    def _train(self) -> None:
        config = self.config
        tick_images = max(1, round(config.tick_kimg * 1000))
        next_tick = (self.shown // tick_images + 1) * tick_images  # on multiples: the same ticks after a resume
        self._save_reals()
        self._resume_clock()
        while self.shown < self.schedule.total_images and (config.max_steps is None or self.step < config.max_steps):
            phase = self.schedule.phase_at(self.shown)
            if phase.resolution != self.optimizer_resolution:
                self._new_optimizers(phase.resolution)
                self.reporter.message(f"Training at {phase.resolution}x{phase.resolution}")
            self._guarded_step(phase)
            self.reporter.advance(self.schedule.minibatch[phase.resolution] * self.dist.world_size)
            resolution_done = self.shown >= self.schedule.resolution_end(phase.resolution)
            stopping = self.shown >= self.schedule.total_images or self.step == config.max_steps
            if self.shown >= next_tick or resolution_done or stopping:
                next_tick = (self.shown // tick_images + 1) * tick_images
                self._tick(phase)
                if resolution_done:
                    self._evaluate(phase.resolution)
                if resolution_done or stopping or self.ticks % config.snapshot_ticks == 0:
                    self.save()
                if self._stop_requested_by_any_process():
                    break
                self._resume_clock()
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

    def _resume_clock(self) -> None:
        self.tick_start_time, self.tick_start_shown = time.perf_counter(), self.shown

    def _tick(self, phase: Phase) -> None:
        means = self.dist.average(self.stats / max(self.tick_steps, 1)).tolist()  # the host reads of a tick
        skipped = int(self.skipped.item())
        streak = int(self.dist.average(self.nonfinite_streak.clone()).item())
        if streak >= MAX_NONFINITE_STREAK:
            raise TrainingStopped(
                f"training diverged: the last {streak} steps all had non-finite (NaN/Inf) losses or gradients at "
                f"{phase.resolution}x{phase.resolution} (alpha {self.last_alpha:.3f}, {self.shown} images shown), so "
                f"their updates were skipped. Nothing more was saved; the last checkpoint "
                f"({self.last_checkpoint or 'none yet'}) is intact. Check the data for NaN/Inf, lower --lr, or use "
                f"--amp bf16/off instead of fp16, then start again or --resume from that checkpoint")
        seconds = time.perf_counter() - self.tick_start_time
        images = self.shown - self.tick_start_shown
        speed = self.stage_speed.setdefault(str(phase.resolution), {"images": 0, "seconds": 0.0})
        speed["images"] += images
        speed["seconds"] += seconds
        self.ticks += 1
        record = {"tick": self.ticks, "step": self.step, "images_shown": self.shown, "kimg": self.shown / 1000,
                  "resolution": phase.resolution, "alpha": self.last_alpha,
                  "img_per_sec": images / max(seconds, 1e-9), "skipped_steps": skipped,
                  **dict(zip(STAT_NAMES, means))}
        if self.amp == "fp16":
            record.update(loss_scale_d=self.d_scaler.get_scale(), loss_scale_g=self.g_scaler.get_scale())
        self.reporter.record(record)
        self.stats.zero_()
        self.tick_steps = 0
        if self.dist.is_main:
            alpha = record["alpha"]
            samples = self.sample(self.grid_latents, phase.resolution, alpha)
            scale = max(1, min(self.config.resolution, GRID_CELL) // phase.resolution)  # same size at every stage
            grid = image_grid(samples, self.config.grid_shape[0], scale)
            ckpt.replace_atomically(self.run_dir / f"fakes-{self.shown:09d}.png", lambda path: save_png(grid, path))
            self.reporter.image("samples", grid, self.shown)

    @torch.no_grad()
    def sample(self, latents: torch.Tensor, res: int, alpha: float = 1.0) -> torch.Tensor:
        """EMA generator images in [-1, 1], in batches."""
        with self._autocast():
            return torch.cat([self.G_ema(z, res, alpha).float() for z in latents.split(SAMPLE_BATCH)])

    def _save_reals(self) -> None:
        if not self.dist.is_main or self.shown > 0:
            return
        count = self.config.grid_shape[0] * self.config.grid_shape[1]
        index, flip = self.data.indices(0, count)
        reals = self.data.to_device(self.data.read(index, flip, self.config.resolution))
        grid = image_grid(reals, self.config.grid_shape[0])
        ckpt.replace_atomically(self.run_dir / "reals.png", lambda path: save_png(grid, path))
        self.reporter.image("reals", grid, 0)

    def _evaluate(self, res: int) -> None:
        """SWD of EMA samples against reals at the end of a resolution (rank 0)."""
        count = min(self.config.swd_images, self.data.count)
        if not self.dist.is_main or count < 1 or res < 8:
            return
        started = time.perf_counter()
        result = evaluate_swd(self.G_ema, self.data, res, count, self.config.seed, self.device, self._autocast)
        self.swd_results[str(res)] = result
        self.reporter.scalars("swd", result, self.shown)
        self.reporter.event({"event": "swd", "resolution": res, "images": count, "images_shown": self.shown,
                             **result})
        self.reporter.message(f"SWD x1e3 at {res}x{res} ({count} images, {time.perf_counter() - started:.1f} s): "
                              + ", ".join(f"{key} {value:.2f}" for key, value in result.items()))

    # ------------------------------------------------------------------------------------------------
    # Checkpoints.

    def save(self) -> None:
        if not self.dist.is_main or ckpt.checkpoint_path(self.run_dir, self.step).exists():
            return
        tensors, optimizers = {"rng.train": self.rng.get_state()}, {}
        if self.optimizer_resolution is not None:
            for key, optimizer in (("G", self.g_opt), ("D", self.d_opt)):
                flat, meta = ckpt.optimizer_to_flat(optimizer, f"optimizer.{key}")
                tensors.update(flat)
                optimizers[key] = meta
        state = {"step": self.step, "images_shown": self.shown, "resolution": self.last_resolution,
                 "alpha": self.last_alpha, "ticks": self.ticks,
                 "optimizer_resolution": self.optimizer_resolution, "optimizers": optimizers,
                 "scalers": {"G": self.g_scaler.state_dict(), "D": self.d_scaler.state_dict()},
                 "skipped_steps": int(self.skipped.item()), "stage_speed": self.stage_speed,
                 "swd": self.swd_results, "config": self.config.to_json()}
        weights = {"G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict()}
        path = ckpt.save_checkpoint(self.run_dir, self.step, weights, tensors, state, self.config.keep_checkpoints)
        self.last_checkpoint = path
        self.reporter.message(f"Checkpoint {path}")

    def _load(self, checkpoint: Path) -> None:
        try:
            self._load_verified(checkpoint)
        except ckpt.CheckpointError:  # its message already names the file and the problem
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as error:  # verified files that do not fit together
            raise ckpt.CheckpointError(f"checkpoint {str(checkpoint)!r} does not fit this version of progan_fast "
                                       f"or was edited ({type(error).__name__}: {error}); resume from another "
                                       f"checkpoint: {ckpt.HOW_TO_RESUME}") from error

    def _load_verified(self, checkpoint: Path) -> None:
        state, tensors = ckpt.load_state(checkpoint)
        for key, net in (("G", self.G), ("G_ema", self.G_ema), ("D", self.D)):
            weights = ckpt.load_weights(checkpoint, key)
            ckpt.check_fits(net, weights, checkpoint, key)
            net.load_state_dict(weights)
        if state["optimizer_resolution"] is not None:
            self._new_optimizers(state["optimizer_resolution"])
            for key, optimizer in (("G", self.g_opt), ("D", self.d_opt)):
                optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, state["optimizers"][key],
                                                                   f"optimizer.{key}"))
        self.g_scaler.load_state_dict(state["scalers"]["G"])
        self.d_scaler.load_state_dict(state["scalers"]["D"])
        self.rng.set_state(tensors["rng.train"])
        self.shown, self.step, self.ticks = state["images_shown"], state["step"], state["ticks"]
        self.last_resolution, self.last_alpha = state["resolution"], state["alpha"]
        self.skipped.fill_(state["skipped_steps"])
        self.stage_speed, self.swd_results = state["stage_speed"], state["swd"]


def evaluate_swd(G_ema, data: RealImages, res: int, count: int, seed: int, device: torch.device,
                 autocast=contextlib.nullcontext, alpha: float = 1.0) -> dict:
    """SWD between `count` EMA samples and `count` reals at `res` (reals blended like in training if alpha < 1)."""
    index = torch.randperm(data.count, generator=torch.Generator().manual_seed(seed + 3))[:count].numpy()
    reals = data.to_device(data.read(index, np.zeros(len(index), bool), res))  # no flips
    if alpha < 1.0:
        reals = PF.fade_downsample(reals, alpha)
    latents = torch.randn(count, G_ema.latent_size, generator=torch.Generator().manual_seed(seed + 4)).to(device)
    with torch.no_grad(), autocast():
        fakes = torch.cat([G_ema(z, res, alpha).float() for z in latents.split(SAMPLE_BATCH)])
    return swd(to_uint8(reals), to_uint8(fakes), seed=seed)
