"""One training step of the progressive WGAN-GP (docs/progan.md, "Training"): what the trainer runs and what the
training-step benchmark times.

Per step: one D step (WGAN-GP with penalty weight `gp_weight` and drift `drift` * D(real)^2), one G step, then
the EMA of G (ema_decay); Adam for both, with new optimizer state at each new resolution. The numbers come from
the TrainConfig.

No host reads inside a step: alpha of a fade is a device tensor, losses and skipped-update counts accumulate on
the device and are read once per tick. Mixed precision: autocast in bf16 or fp16; each network has its own
GradScaler (dynamic loss scaling for fp16, a fixed scale of 1 otherwise) that skips and counts non-finite
updates. The gradient penalty's input gradient is taken from the scaled score and unscaled before its norm.

All random draws (latents, the mixing factor of the penalty) come from one generator seeded identically on every
process; each process draws the global batch and keeps its own slice, so a multi-process run equals a
single-process run of the same global batch, and a resumed run (the generator's state is checkpointed) continues
exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch

from .. import functional as PF
from ..architecture import fading
from .config import TrainConfig
from .distributed import Distributed

STAT_NAMES = ("d_loss", "g_loss", "gradient_penalty", "d_real", "d_fake")  # accumulated per step, read per tick
AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # by --amp mode


def ema_decay(config: TrainConfig, global_batch: int, images_shown: int) -> float:
    """The EMA's decay for a step of `global_batch` images after `images_shown`: `ema_beta` if the configuration
    fixes one, else StyleGAN2-ADA's half-life in images, `ema_kimg` thousand, at most `ema_rampup` times the images
    shown so far (so the EMA copy follows G closely early on: the first step copies G)."""
    if config.ema_beta is not None:
        return config.ema_beta
    half_life = config.ema_kimg * 1000
    if config.ema_rampup > 0:
        half_life = min(half_life, config.ema_rampup * images_shown)
    return 0.5 ** (global_batch / max(half_life, 1e-8))


class TrainStep:
    """G, D, the EMA copy of G, their optimizers and loss scalers, and the step that updates them.

    G and D may be `progan_fast.models` or `progan_fast.reference` networks, placed on `device` already. With
    compile_forward, the forward passes of G and D run through torch.compile; D's evaluation of the mixed images
    stays eager, since the gradient penalty differentiates it twice.
    """

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, config: TrainConfig, device: torch.device,
                 autocast_dtype: Optional[torch.dtype] = None, dist: Optional[Distributed] = None,
                 compile_forward: bool = False):
        self.G, self.D, self.config, self.device = G, D, config, torch.device(device)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.g_params, self.ema_params = list(G.parameters()), list(self.G_ema.parameters())
        self.g_forward, self.d_forward = (torch.compile(G), torch.compile(D)) if compile_forward else (G, D)
        self.autocast_dtype = autocast_dtype
        self.dist = dist or Distributed(device=self.device)
        self.rng = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.d_scaler, self.g_scaler = self._scaler(), self._scaler()
        self.optimizer_resolution: Optional[int] = None  # the resolution the optimizers were made for
        self.g_opt: Optional[torch.optim.Adam] = None
        self.d_opt: Optional[torch.optim.Adam] = None
        self.one = torch.ones((), device=self.device)
        self.stats = torch.zeros(len(STAT_NAMES), device=self.device)
        self.skipped = torch.zeros((), device=self.device)  # skipped updates of D and G in the run
        self.nonfinite_streak = torch.zeros((), device=self.device)  # consecutive steps with a skipped update

    @property
    def dynamic_loss_scale(self) -> bool:
        return self.autocast_dtype == torch.float16

    def _scaler(self) -> torch.amp.GradScaler:
        if self.dynamic_loss_scale:
            # docs/progan.md, "Training": the official code starts at 2**6 and doubles about every 2000 good steps.
            return torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 6, growth_interval=2000)
        # A fixed scale of 1 (it only halves after a non-finite step): the scaler then just skips and counts them.
        return torch.amp.GradScaler(self.device.type, init_scale=1.0, growth_interval=2 ** 31 - 1)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def new_optimizers(self, resolution: int) -> None:
        """Fresh Adam state for both networks, as at the start of every resolution."""
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

    def d_step(self, reals: torch.Tensor, z: torch.Tensor, u: torch.Tensor, res: int, alpha) -> torch.Tensor:
        """WGAN-GP update of D; [loss, penalty, mean D(real), mean D(fake), skipped] on the device."""
        with torch.no_grad(), self.autocast():
            fakes = self.g_forward(z, res, alpha)
        with self.autocast():
            d_real = self.d_forward(reals, alpha).float()
            d_fake = self.d_forward(fakes, alpha).float()
            mixed = torch.lerp(reals, fakes.to(reals.dtype), u).requires_grad_(True)
            d_mixed = self.D(mixed, alpha).float()
        (scaled_grad,) = torch.autograd.grad(self.d_scaler.scale(d_mixed.sum()), mixed, create_graph=True)
        penalty = PF.gradient_penalty(scaled_grad / self.d_scaler.scale(self.one), weight=self.config.gp_weight)
        loss = d_fake.mean() - d_real.mean() + penalty + self.config.drift * d_real.square().mean()
        self.d_opt.zero_grad(set_to_none=True)
        self.d_scaler.scale(loss).backward()
        skipped = self._apply(self.d_opt, self.d_scaler, self.D)
        return torch.stack([loss, penalty, d_real.mean(), d_fake.mean(), skipped]).detach()

    def g_step(self, z: torch.Tensor, res: int, alpha) -> torch.Tensor:
        """Update of G against D (whose gradients stay as the D step left them); [loss, skipped] on the device."""
        self.D.requires_grad_(False)
        with self.autocast():
            loss = -self.d_forward(self.g_forward(z, res, alpha), alpha).float().mean()
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(loss).backward()
        self.D.requires_grad_(True)
        skipped = self._apply(self.g_opt, self.g_scaler, self.G)
        return torch.stack([loss.detach(), skipped])

    def __call__(self, reals: torch.Tensor, res: int, alpha=1.0, *, images_shown: int) -> None:
        """One D step, one G step and the EMA update on this process's share of the reals at `res`.

        alpha: the float 1.0 in stable phases (which skips the old branches), the device tensor during fades
        (the reals are then blended the same way as the images of G). images_shown: before this step, over all
        processes (it sets the EMA's decay).
        """
        global_batch = len(reals) * self.dist.world_size
        z_d = self._draw(global_batch, self.G.latent_size)
        u = self._draw(global_batch, 1, 1, 1, uniform=True)
        z_g = self._draw(global_batch, self.G.latent_size)
        if fading(alpha):
            reals = PF.fade_downsample(reals, alpha)
        d_loss, penalty, d_real, d_fake, d_skipped = self.d_step(reals, z_d, u, res, alpha)
        g_loss, g_skipped = self.g_step(z_g, res, alpha)
        decay = ema_decay(self.config, global_batch, images_shown)
        torch._foreach_lerp_(self.ema_params, self.g_params, 1.0 - decay)
        self.nonfinite_streak.add_(1).mul_((d_skipped + g_skipped).clamp(max=1))
        self.stats += torch.stack([d_loss, g_loss, penalty, d_real, d_fake])
