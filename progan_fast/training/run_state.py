"""Reading a checkpoint back: the generator alone, for sampling and metrics. The files and their safety checks
are checkpoint.py's."""
from __future__ import annotations

from typing import Tuple

import torch

from . import checkpoint as ckpt
from .config import TrainConfig, build_networks


def load_generator(path: str, device="cpu", ema: bool = True) -> Tuple[torch.nn.Module, dict, TrainConfig]:
    """The (EMA) generator of a checkpoint or run folder, its training state (JSON) and its configuration."""
    checkpoint = ckpt.find_checkpoint(path)
    state, _ = ckpt.load_state(checkpoint)
    config = TrainConfig.from_json(state["config"])
    G, _ = build_networks(config)
    G.load_state_dict(ckpt.load_weights(checkpoint, "G_ema" if ema else "G"))
    return G.to(device).eval().requires_grad_(False), state, config


def default_device() -> torch.device:
    """Where the commands that read a checkpoint run without --device: the GPU if there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
