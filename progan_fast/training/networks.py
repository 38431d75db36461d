"""Building the networks of a run from its configuration, and loading them back from a checkpoint."""
from __future__ import annotations

from typing import Tuple

import torch

from ..models import Discriminator, Generator
from . import checkpoint as ckpt
from .config import TrainConfig


def build_networks(config: TrainConfig) -> Tuple[Generator, Discriminator]:
    G = Generator(config.resolution, 3, config.latent_size, config.fmap_base, config.fmap_max)
    D = Discriminator(config.resolution, 3, config.fmap_base, config.fmap_max,
                      mbstd_group_size=config.mbstd_group_size)
    return G, D


def load_generator(path: str, device="cpu", ema: bool = True) -> Tuple[Generator, dict, TrainConfig]:
    """The (EMA) generator of a checkpoint or run folder, its training state (JSON) and its configuration."""
    checkpoint = ckpt.find_checkpoint(path)
    state, _ = ckpt.load_state(checkpoint)
    config = TrainConfig.from_json(state["config"])
    G, _ = build_networks(config)
    G.load_state_dict(ckpt.load_weights(checkpoint, "G_ema" if ema else "G"))
    return G.to(device).eval().requires_grad_(False), state, config


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

