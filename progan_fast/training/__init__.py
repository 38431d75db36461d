"""Progressive WGAN-GP training of progan_fast's Generator and Discriminator (`python -m progan_fast.train`).

Modules: config (presets, command-line options, the networks of a configuration), schedule (resolution, alpha
and minibatch by images shown), data (image folder -> uint8 cache per resolution), step (one training step: the
networks, optimizers and loss scalers it updates), loop (the run: ticks, evaluations, checkpoints, stopping),
ticks (tick records and image grids), run_state (what a checkpoint holds, loading it back), checkpoint (its
files: safetensors + JSON, written crash-safe), run_folder (the folder a run writes, owned by one trainer),
distributed (torchrun data parallelism), reporting (progress, JSONL, TensorBoard).
"""
from .config import PRESETS, TrainConfig, build_networks
from .loop import Trainer
from .run_state import load_generator
from .schedule import Schedule
from .step import TrainStep

__all__ = ["Trainer", "TrainConfig", "TrainStep", "PRESETS", "Schedule", "build_networks", "load_generator"]
