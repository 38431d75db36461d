"""Progressive WGAN-GP training of progan_fast's Generator and Discriminator (`python -m progan_fast.train`).

Modules: config (presets and command-line options), schedule (resolution, alpha and minibatch by images shown),
data (image folder -> uint8 cache per resolution), checkpoint (safetensors + JSON), networks, distributed
(torchrun data parallelism), reporting (progress, JSONL, TensorBoard, grids), loop (the trainer).
"""
from .config import PRESETS, TrainConfig
from .loop import Trainer
from .networks import build_networks, load_generator
from .schedule import Schedule

__all__ = ["Trainer", "TrainConfig", "PRESETS", "Schedule", "build_networks", "load_generator"]
