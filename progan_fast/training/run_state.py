"""What a checkpoint holds of a run, and reading it back: the whole trainer when a run resumes, or the generator
alone for sampling and metrics. The files and their safety checks are checkpoint.py's.

A checkpoint holds everything a resumed run needs to continue bit for bit: the weights of G, G_ema and D, the
optimizer moments, the loss scalers, the state of the step's random generator, the counters of the run (step,
images shown, ticks, skipped updates, speed, SWD results) and its configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Tuple

import torch

from . import checkpoint as ckpt
from .config import TrainConfig, build_networks

if TYPE_CHECKING:
    from .loop import Trainer


def contents(trainer: "Trainer") -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, torch.Tensor], dict]:
    """(weights by network, training-state tensors, training-state JSON) of the trainer now."""
    gan = trainer.gan
    tensors, optimizers = {"rng.train": gan.rng.get_state()}, {}
    if gan.optimizer_resolution is not None:
        for key, optimizer in (("G", gan.g_opt), ("D", gan.d_opt)):
            flat, meta = ckpt.optimizer_to_flat(optimizer, f"optimizer.{key}")
            tensors.update(flat)
            optimizers[key] = meta
    state = {"step": trainer.step, "images_shown": trainer.shown, "resolution": trainer.last_resolution,
             "alpha": trainer.last_alpha, "ticks": trainer.ticks.count,
             "optimizer_resolution": gan.optimizer_resolution, "optimizers": optimizers,
             "scalers": {"G": gan.g_scaler.state_dict(), "D": gan.d_scaler.state_dict()},
             "skipped_steps": int(gan.skipped.item()), "stage_speed": trainer.ticks.stage_speed,
             "swd": trainer.swd_results, "config": trainer.config.to_json()}
    weights = {"G": gan.G.state_dict(), "G_ema": gan.G_ema.state_dict(), "D": gan.D.state_dict()}
    return weights, tensors, state


def restore(trainer: "Trainer", checkpoint: Path) -> None:
    """Put the trainer where it was when `checkpoint` was written; CheckpointError if the checkpoint cannot be."""
    try:
        _restore_verified(trainer, checkpoint)
    except ckpt.CheckpointError:  # its message already names the file and the problem
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as error:  # verified files that do not fit together
        raise ckpt.CheckpointError(f"checkpoint {str(checkpoint)!r} does not fit this version of progan_fast "
                                   f"or was edited ({type(error).__name__}: {error}); resume from another "
                                   f"checkpoint: {ckpt.HOW_TO_RESUME}") from error


def _restore_verified(trainer: "Trainer", checkpoint: Path) -> None:
    gan = trainer.gan
    state, tensors = ckpt.load_state(checkpoint)
    for key, net in (("G", gan.G), ("G_ema", gan.G_ema), ("D", gan.D)):
        weights = ckpt.load_weights(checkpoint, key)
        ckpt.check_fits(net, weights, checkpoint, key)
        net.load_state_dict(weights)
    if state["optimizer_resolution"] is not None:
        gan.new_optimizers(state["optimizer_resolution"])
        for key, optimizer in (("G", gan.g_opt), ("D", gan.d_opt)):
            optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, state["optimizers"][key],
                                                               f"optimizer.{key}"))
    gan.g_scaler.load_state_dict(state["scalers"]["G"])
    gan.d_scaler.load_state_dict(state["scalers"]["D"])
    gan.rng.set_state(tensors["rng.train"])
    gan.skipped.fill_(state["skipped_steps"])
    trainer.shown, trainer.step, trainer.ticks.count = state["images_shown"], state["step"], state["ticks"]
    trainer.last_resolution, trainer.last_alpha = state["resolution"], state["alpha"]
    trainer.ticks.stage_speed, trainer.swd_results = state["stage_speed"], state["swd"]


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
