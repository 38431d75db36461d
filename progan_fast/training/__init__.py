"""Progressive WGAN-GP training of progan_fast's Generator and Discriminator (`python -m progan_fast.train`).

Modules: config (presets, command-line options, the networks of a configuration), schedule (resolution, alpha
and minibatch by images shown), data (image folder -> uint8 cache per resolution), checkpoint (safetensors +
JSON), run_state (loading a checkpoint's generator), distributed (torchrun data parallelism), reporting
(progress, JSONL, TensorBoard, grids), loop (the trainer).
"""
from .config import PRESETS, TrainConfig, build_networks
from .loop import Trainer
from .run_state import load_generator
from .schedule import Schedule

__all__ = ["Trainer", "TrainConfig", "PRESETS", "Schedule", "build_networks", "load_generator"]
