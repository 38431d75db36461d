"""What a checkpoint holds of a run, and reading it back: the whole trainer when a run resumes, or the generator
alone for sampling and metrics. The files and their safety checks are checkpoint.py's.

A checkpoint holds everything a resumed run needs to continue bit for bit: the weights of G, G_ema and D, the
optimizer moments, the loss scalers, the state of the step's random generator, the counters of the run (step,
images shown, ticks, skipped updates, speed, SWD and MS-SSIM results) and its configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import torch

from ..cli import Number, OptionError
from . import checkpoint as ckpt
from .config import TrainConfig, build_networks, check_values

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
             "swd": trainer.swd_results, "ms_ssim": trainer.ms_ssim_results, "config": trainer.config.to_json()}
    weights = {"G": gan.G.state_dict(), "G_ema": gan.G_ema.state_dict(), "D": gan.D.state_dict()}
    return weights, tensors, state


COUNTER = Number(int, 0)
FRACTION = Number(float, 0, 1)
SECONDS = Number(float, 0)


def load_state(checkpoint: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """The training state of a verified checkpoint (JSON, tensors), its JSON checked field by field
    (state_problem): CheckpointError naming the first field that is missing, of the wrong type or out of range."""
    state, tensors = ckpt.load_state(checkpoint)
    problem = state_problem(state)
    if problem:
        raise ckpt.CheckpointError(f"{str(Path(checkpoint) / ckpt.STATE_JSON)!r} is not a valid training state: "
                                   f"{problem} (the file was edited, or written by another version of "
                                   f"progan_fast); resume from another checkpoint: {ckpt.HOW_TO_RESUME}")
    return state, tensors


def state_problem(state: dict) -> Optional[str]:
    """None when the JSON of a training state (what `contents` writes) can be restored, else the first field that
    cannot, and why. ckpt.load_state has checked that every key is there."""
    if not isinstance(state["config"], dict):
        return f"config must be a JSON object, got {state['config']!r}"
    try:
        config = TrainConfig.from_json(state["config"])
        check_values(config)
    except OptionError as error:
        return f"config.{error.field}: {error}"
    for name, rule in (("step", COUNTER), ("images_shown", COUNTER), ("ticks", COUNTER), ("skipped_steps", COUNTER),
                       ("alpha", FRACTION)):
        if rule.problem(state[name]):
            return f"{name} {rule.problem(state[name])}"
    resolutions = config.schedule().resolutions
    for name in ("resolution", "optimizer_resolution"):
        value = state[name]
        if not (value is None and name == "optimizer_resolution") and \
                (not COUNTER.fits(value) or value not in resolutions):
            return f"{name} must be one of the run's resolutions {resolutions}, got {value!r}"
    if not isinstance(state["optimizers"], dict):
        return f"optimizers must be a JSON object, got {state['optimizers']!r}"
    if state["optimizer_resolution"] is not None:
        for key in ("G", "D"):
            problem = _optimizer_problem(state["optimizers"].get(key), config)
            if problem:
                return f"optimizers.{key}{problem}"
    for key in ("G", "D"):
        scaler = state["scalers"].get(key) if isinstance(state["scalers"], dict) else None
        if not isinstance(scaler, dict) or not all(Number().fits(value) for value in scaler.values()) or \
                not Number(float, 0, low_open=True).fits(scaler.get("scale")):
            return f"scalers.{key} must be a loss scaler's state (numbers, with a scale > 0), got {scaler!r}"
    speeds = state["stage_speed"]
    if not isinstance(speeds, dict) or not all(
            isinstance(segments, list) and all(isinstance(speed, dict) and COUNTER.fits(speed.get("images")) and
                                               SECONDS.fits(speed.get("seconds")) for speed in segments)
            for segments in map(_segments, speeds.values())):
        return (f"stage_speed must map resolutions to lists of {{\"images\": count, \"seconds\": time}}, got "
                f"{speeds!r}")
    swd = state["swd"]
    if not isinstance(swd, dict) or not all(isinstance(result, dict) and all(map(_is_number, result.values()))
                                            for result in swd.values()):
        return f"swd must map resolutions to SWD results (numbers by level), got {swd!r}"
    ms_ssim = state.get("ms_ssim", {})  # absent from the checkpoints of earlier versions
    if not isinstance(ms_ssim, dict) or not all(isinstance(result, dict) and set(result) == {"fakes", "reals"} and
                                                all(map(_is_number, result.values())) for result in ms_ssim.values()):
        return f"ms_ssim must map resolutions to {{\"fakes\": number, \"reals\": number}}, got {ms_ssim!r}"
    return None


def _segments(speed):
    """The timed segments of a resolution; checkpoints of earlier versions hold one {"images", "seconds"}."""
    return [speed] if isinstance(speed, dict) else speed


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optimizer_problem(meta, config: TrainConfig) -> Optional[str]:
    """None when an optimizer's JSON (optimizer_to_flat's) fits the configuration, else the rest of the message."""
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list) or \
            not isinstance(meta.get("state_keys"), dict):
        return f" must be an optimizer's state (param_groups and state_keys), got {meta!r}"
    settings = {"lr": config.lr, "betas": [config.beta1, config.beta2], "eps": config.adam_eps}
    for index, group in enumerate(meta["param_groups"]):
        for name, expected in settings.items():
            if not isinstance(group, dict) or group.get(name) != expected:
                found = group.get(name) if isinstance(group, dict) else group
                return f".param_groups[{index}].{name} must equal the configuration's ({expected!r}), got {found!r}"
    if not all(isinstance(names, list) and all(isinstance(name, str) for name in names)
               for names in meta["state_keys"].values()):
        return f".state_keys must map parameters to lists of names, got {meta['state_keys']!r}"
    return None


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
    state, tensors = load_state(checkpoint)
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
    trainer.ticks.stage_speed = {res: _segments(speed) for res, speed in state["stage_speed"].items()}
    trainer.swd_results, trainer.ms_ssim_results = state["swd"], state.get("ms_ssim", {})


def load_generator(path: str, device="cpu", ema: bool = True) -> Tuple[torch.nn.Module, dict, TrainConfig, Path]:
    """The (EMA) generator of a checkpoint or run folder, its training state (JSON), its configuration and the
    checkpoint folder it came from (a run folder's newest complete one)."""
    checkpoint = ckpt.find_checkpoint(path)
    state, _ = load_state(checkpoint)
    config = TrainConfig.from_json(state["config"])
    G, _ = build_networks(config)
    G.load_state_dict(ckpt.load_weights(checkpoint, "G_ema" if ema else "G"))
    return G.to(device).eval().requires_grad_(False), state, config, checkpoint


def loaded_text(checkpoint: Path, state: dict, ema: bool) -> str:
    """The line with which generate and metrics say which generator they use."""
    which = "EMA generator" if ema else "trained generator (--raw)"
    return (f"Loaded the {which} of {checkpoint}: step {state['step']}, {state['images_shown']} images shown, "
            f"{state['resolution']}x{state['resolution']}, alpha {state['alpha']:.3f}")


def default_device() -> torch.device:
    """Where the commands that read a checkpoint run without --device: the GPU if there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
