"""Training options: presets, the command-line parser, the resolved configuration and the networks it describes.

Every number of a preset can be overridden on the command line. Options split in two: training options define
the run (changing one would make a resumed run a different run, so a resume refuses that), and run-control
options (where outputs go, how often to log, which backend...) may change when a run is resumed.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .. import cli
from .. import models as fast_models
from ..backend import ACCELERATED, BACKENDS, unavailable_reason
from ..cli import COUNT, SEED, Number, OptionError
from .schedule import Schedule

OFFICIAL_MINIBATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
QUICK_MINIBATCH = {4: 64, 8: 64, 16: 32, 32: 32, 64: 16, 128: 16, 256: 8, 512: 4, 1024: 4}

PRESETS = {
    # The official TensorFlow code's defaults (the paper used 800k + 800k images per resolution).
    # Its EMA decays by a fixed 0.999 per step, whatever the minibatch: a half-life of 88.6k images at batch 128,
    # 2.8k at batch 4 (no single half-life in images matches every batch size).
    "official": dict(stable_kimg=600.0, fade_kimg=600.0, minibatch=OFFICIAL_MINIBATCH, fmap_base=8192, fmap_max=512,
                     tick_kimg=160.0, swd_images=8192, ema_beta=0.999),
    # Small networks and short phases: demos on a CPU and CI. The EMA's half-life is short next to a 10k-image
    # phase, so the layers of each new resolution reach the EMA copy within the phase that trains them.
    "quick": dict(stable_kimg=10.0, fade_kimg=10.0, minibatch=QUICK_MINIBATCH, fmap_base=256, fmap_max=64,
                  tick_kimg=2.0, swd_images=1024, ema_kimg=1.0, ema_rampup=0.05),
}
QUICK = PRESETS["quick"]
BUILTIN_RESOLUTION = 32
FOLDER_RESOLUTION = 256
AMP_MODES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass
class TrainConfig:
    # Training options (fixed for the life of a run).
    data: Optional[str] = None
    resolution: int = BUILTIN_RESOLUTION
    preset: str = "quick"
    stable_kimg: float = QUICK["stable_kimg"]
    fade_kimg: float = QUICK["fade_kimg"]
    minibatch: Dict[int, int] = field(default_factory=lambda: dict(QUICK_MINIBATCH))
    lr: float = 0.001
    beta1: float = 0.0
    beta2: float = 0.99
    adam_eps: float = 1e-8
    gp_weight: float = 10.0
    drift: float = 0.001
    ema_kimg: float = QUICK["ema_kimg"]
    ema_rampup: float = QUICK["ema_rampup"]
    ema_beta: Optional[float] = None
    latent_size: Optional[int] = None
    fmap_base: int = QUICK["fmap_base"]
    fmap_max: int = QUICK["fmap_max"]
    mbstd_group_size: int = 4
    mirror: bool = False
    seed: int = 0
    amp: str = "auto"
    # Run control (may change on resume).
    out: Optional[str] = None
    resume: Optional[str] = None
    cache_dir: Optional[str] = None
    backend: str = "auto"
    device: str = "auto"
    tick_kimg: float = QUICK["tick_kimg"]
    snapshot_ticks: int = 5
    keep_checkpoints: int = 3
    grid: str = "8x4"
    swd_images: int = QUICK["swd_images"]
    max_steps: Optional[int] = None
    tensorboard: bool = True
    channels_last: str = "auto"
    cudnn_benchmark: bool = True
    progress: bool = True

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["minibatch"] = {str(res): size for res, size in self.minibatch.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        """The configuration stored as JSON (a checkpoint's); OptionError naming the first field of the wrong type
        or unknown to this version. Missing fields (added after the checkpoint was written) get their defaults;
        check_values then checks the ranges."""
        if not isinstance(data, dict):
            raise OptionError("config", f"the configuration must be a JSON object, got {type(data).__name__}")
        types = typing.get_type_hints(cls)
        for name, value in data.items():
            if name not in types:
                raise OptionError(name, f"unknown option {name!r} (written by another version of progan_fast?)")
            if name == "minibatch":
                if not isinstance(value, dict) or not all(key.isdigit() for key in value):
                    raise OptionError(name, f"minibatch must map resolutions to sizes ({{\"4\": 64, ...}}), got "
                                            f"{value!r}")
            elif not _is_of_type(value, types[name]):
                raise OptionError(name, f"{option_name(name)} must be of type {_type_name(types[name])}, got "
                                        f"{value!r}")
        data = dict(data)
        if "minibatch" in data:
            data["minibatch"] = {int(res): size for res, size in data["minibatch"].items()}
        return cls(**data)

    @property
    def grid_shape(self):
        return parse_grid(self.grid)

    def schedule(self) -> Schedule:
        return Schedule(self.resolution, round(self.stable_kimg * 1000), round(self.fade_kimg * 1000),
                        self.minibatch)


def _is_of_type(value, hint) -> bool:
    """Whether a JSON value has the type of a TrainConfig field (int for float is fine, bool for int is not)."""
    if typing.get_origin(hint) is typing.Union:
        return any(_is_of_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    return "null" if hint is type(None) else hint.__name__


# The range of every numeric option: presets, the command line and the configuration stored in a checkpoint
# are all checked against these. None (where a field allows it) means "the default".
NUMBERS = {
    "stable_kimg": Number(float, 0), "fade_kimg": Number(float, 0), "tick_kimg": Number(float, 0, low_open=True),
    "lr": Number(float, 0, low_open=True), "beta1": Number(float, 0, 1, high_open=True),
    "beta2": Number(float, 0, 1, high_open=True), "adam_eps": Number(float, 0, low_open=True),
    "gp_weight": Number(float, 0), "drift": Number(float, 0),
    # beta = 1 (or no half-life) would keep the EMA copy at the initial weights for ever.
    "ema_kimg": Number(float, 0, low_open=True), "ema_rampup": Number(float, 0),
    "ema_beta": Number(float, 0, 1, high_open=True),
    "latent_size": Number(int, 1), "fmap_base": Number(int, 1), "fmap_max": Number(int, 1),
    "mbstd_group_size": Number(int, 1), "seed": SEED, "snapshot_ticks": Number(int, 1),
    "keep_checkpoints": Number(int, 1), "swd_images": Number(int, 0), "max_steps": Number(int, 0),
}
CHOICES = {"preset": tuple(PRESETS), "amp": AMP_MODES, "backend": BACKENDS, "channels_last": CHANNELS_LAST_MODES}

TRAINING_OPTIONS = ("data", "resolution", "preset", "stable_kimg", "fade_kimg", "minibatch", "lr", "beta1", "beta2",
                    "adam_eps", "gp_weight", "drift", "ema_kimg", "ema_rampup", "ema_beta", "latent_size",
                    "fmap_base", "fmap_max", "mbstd_group_size", "mirror", "seed", "amp")


def parse_minibatch(text: str) -> Dict[int, int]:
    sizes = {}
    for item in text.split(","):
        try:
            res, size = (int(part) for part in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--minibatch expects RES:SIZE pairs separated by commas "
                                             f"(e.g. 4:128,8:64), got {text!r}") from None
        if cli.resolution_problem(res):
            raise argparse.ArgumentTypeError(f"{res} in {item!r} is not a resolution; resolutions are powers "
                                             f"of two from 4 to 1024 (e.g. 4:128,8:64)")
        if size < 1:
            raise argparse.ArgumentTypeError(f"--minibatch: size for {res}x{res} must be >= 1, got {size}")
        sizes[res] = size
    return sizes


def check_resolution(res: int) -> int:
    if cli.resolution_problem(res):
        raise OptionError("resolution", f"--resolution must be a power of two from 4 to 1024 (4, 8, 16, ..., "
                                        f"1024), got {res!r}")
    return res


def parse_resolution(text: str) -> int:
    try:
        return check_resolution(int(text))
    except ValueError as error:
        message = str(error) if text.strip().lstrip("-").isdigit() else f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(message.replace("--resolution ", "")) from None


def parse_grid(text: str):
    try:
        cols, rows = (int(part) for part in text.lower().split("x"))
        if cols < 1 or rows < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid expects COLSxROWS with positive numbers (e.g. 8x4), got {text!r}") \
            from None
    return cols, rows


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    # Defaults are None here so that the options the user gave can be told apart from preset values.
    p = argparse.ArgumentParser(
        prog="python -m progan_fast.train",
        description="Train a Progressive GAN (ProGAN) from 4x4 up to --resolution, with WGAN-GP, mixed precision "
                    "and multi-GPU data parallelism (launch with torchrun --nproc_per_node N -m progan_fast.train).",
        argument_default=None)
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="FOLDER", help="folder of images (png/jpg/webp, searched recursively); "
                      "without it: the 8x8 handwritten digits bundled with scikit-learn, upscaled (no download)")
    data.add_argument("--resolution", type=parse_resolution, help=f"final resolution, a power of two from 4 to 1024 "
                      f"(default {FOLDER_RESOLUTION} with --data, {BUILTIN_RESOLUTION} for the built-in digits)")
    data.add_argument("--mirror", type=_on_off, metavar="on|off", help="random horizontal flips of the reals (off)")
    data.add_argument("--cache-dir", metavar="DIR", help="where the prepared uint8 arrays per resolution are kept "
                      "(default: data/ under $PROGAN_FAST_CACHE, else ~/.cache/progan_fast)")
    sched = p.add_argument_group("schedule (defaults from --preset)")
    sched.add_argument("--preset", choices=sorted(PRESETS), help="official: the defaults of the official ProGAN code "
                       "(600k + 600k images per resolution, its minibatches and widths); quick: small networks and "
                       "short phases for demos and CI. Default: official with --data, quick without")
    sched.add_argument("--stable-kimg", type=float,
                       help="thousands of images per stable phase (official 600, quick 10)")
    sched.add_argument("--fade-kimg", type=float, help="thousands of images per fade-in phase (official 600, quick 10)")
    sched.add_argument("--minibatch", type=parse_minibatch, metavar="RES:SIZE,...",
                       help="minibatch per resolution and per process, overriding the preset's (e.g. 4:64,8:64); "
                            "global batch = this x number of processes")
    sched.add_argument("--max-steps", type=int, help="stop (and save a checkpoint) after this many steps in total; "
                       "continue later with --resume")
    opt = p.add_argument_group("loss and optimizer")
    opt.add_argument("--lr", type=float, help="Adam learning rate (0.001)")
    opt.add_argument("--beta1", type=float, help="Adam beta1 (0.0)")
    opt.add_argument("--beta2", type=float, help="Adam beta2 (0.99)")
    opt.add_argument("--adam-eps", type=float, help="Adam epsilon (1e-8)")
    opt.add_argument("--gp-weight", type=float, help="WGAN-GP lambda (10)")
    opt.add_argument("--drift", type=float, help="weight of D(real)^2 in the D loss (0.001)")
    opt.add_argument("--ema-kimg", type=float, help="half-life of the EMA copy of G (used for samples and metrics) "
                     "in thousands of images (quick 1)")
    opt.add_argument("--ema-rampup", type=float, help="the half-life is at most this fraction of the images shown "
                     "so far; 0 turns the ramp-up off (quick 0.05)")
    opt.add_argument("--ema-beta", type=float, help="a fixed decay of the EMA per step instead of --ema-kimg and "
                     "--ema-rampup (official 0.999)")
    net = p.add_argument_group("networks (defaults from --preset)")
    net.add_argument("--fmap-base", type=int, help="channels = min(fmap_base / 2**stage, fmap_max), "
                     "stage = log2(res) - 1 (official 8192, quick 256)")
    net.add_argument("--fmap-max", type=int, help="largest channel count (official 512, quick 64)")
    net.add_argument("--latent-size", type=int, help="latent size (default: the 4x4 width)")
    net.add_argument("--mbstd-group-size", type=int, help="minibatch stddev group size; 1 turns the layer off (4)")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run folder (default: a new numbered folder under ./runs; "
                     "with --resume: the resumed run's folder)")
    run.add_argument("--resume", metavar="PATH", help="checkpoint folder, or a run folder (its latest checkpoint)")
    run.add_argument("--seed", type=int, help="seed of weights, latents, data order and flips (0)")
    run.add_argument("--amp", choices=AMP_MODES, help="mixed precision: bf16, fp16 (dynamic loss scaling) or off; "
                     "auto = bf16 on GPUs that support it, else off (auto)")
    run.add_argument("--backend", choices=BACKENDS, help="progan_fast op backend (auto)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (auto: the local GPU if there is one)")
    run.add_argument("--channels-last", choices=("auto", "on", "off"), help="channels_last memory format "
                     "(auto: on for CUDA)")
    run.add_argument("--cudnn-benchmark", type=_on_off, metavar="on|off", help="cudnn.benchmark (on)")
    logs = p.add_argument_group("outputs")
    logs.add_argument("--tick-kimg", type=float, help="thousands of images between log lines and sample "
                      "grids (official 160, quick 2)")
    logs.add_argument("--snapshot-ticks", type=int, help="ticks between checkpoints (also saved at the end of "
                      "each resolution and of the run) (5)")
    logs.add_argument("--keep-checkpoints", type=int, help="how many recent checkpoints to keep (3)")
    logs.add_argument("--grid", metavar="COLSxROWS", help="layout of the sample grids (8x4)")
    logs.add_argument("--swd-images", type=int, help="images per set for the SWD at the end of each resolution; "
                      "0 turns it off (preset: 8192 official, 1024 quick)")
    logs.add_argument("--tensorboard", type=_on_off, metavar="on|off", help="TensorBoard scalars and images (on)")
    logs.add_argument("--progress", type=_on_off, metavar="on|off", help="tqdm progress bar (on)")
    return p


def preset_config(name: str) -> TrainConfig:
    """The values of preset `name`, every other option at its default."""
    config = TrainConfig(preset=name)
    for key, value in PRESETS[name].items():
        setattr(config, key, dict(value) if isinstance(value, dict) else value)
    return config


def resolve(args: argparse.Namespace) -> TrainConfig:
    """Preset values, then the options given on the command line."""
    given = {key: value for key, value in vars(args).items() if value is not None}
    config = preset_config(given.get("preset") or ("official" if given.get("data") else "quick"))
    config.resolution = FOLDER_RESOLUTION if given.get("data") else BUILTIN_RESOLUTION
    half_life = sorted(option_name(key) for key in ("ema_kimg", "ema_rampup") if key in given)
    if half_life and "ema_beta" in given:
        raise OptionError("ema_beta", f"--ema-beta (a fixed decay per step) and {' and '.join(half_life)} (a "
                                      f"half-life in images) set the EMA two ways; give only one of them")
    if half_life:
        config.ema_beta = None  # the preset's fixed decay gives way to the half-life asked for
    for key, value in given.items():
        if key == "minibatch":
            config.minibatch.update(value)
        else:
            setattr(config, key, value)
    check_values(config)
    untrained = sorted(res for res in given.get("minibatch", {}) if res > config.resolution)
    if untrained:
        raise OptionError("minibatch", f"--minibatch {untrained[0]}:{given['minibatch'][untrained[0]]}: this run "
                                       f"trains 4x4 to {config.resolution}x{config.resolution}, never "
                                       f"{untrained[0]}x{untrained[0]}; remove it, or raise --resolution")
    return config


def merge_for_resume(saved: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """The saved run's configuration; run-control options may be given again, training options may not change."""
    config = dataclasses.replace(saved, minibatch=dict(saved.minibatch), out=None, max_steps=None)
    for key, value in vars(args).items():
        if value is None:
            continue
        if key in TRAINING_OPTIONS:
            current = getattr(saved, key)
            same = {**current, **value} == current if key == "minibatch" else current == value
            if not same:
                raise OptionError(key, f"{option_name(key)} cannot change when resuming (the run was started "
                                       f"with {current!r}); start a new run instead")
        else:
            setattr(config, key, value)
    check_values(config)
    return config


def check_values(config: TrainConfig) -> None:
    """Every option of the configuration in its range (OptionError naming the option), whatever its origin: a
    preset, the command line or a checkpoint. What the machine offers is check_environment's."""
    check_resolution(config.resolution)
    for name, rule in NUMBERS.items():
        value = getattr(config, name)
        problem = None if value is None else rule.problem(value)  # None: the default (from_json checked types)
        if problem:
            raise OptionError(name, f"{option_name(name)} {problem}")
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            raise OptionError(name, f"{option_name(name)} must be one of {', '.join(choices)}, got "
                                    f"{getattr(config, name)!r}")
    for res, size in config.minibatch.items():
        if cli.resolution_problem(res) or not COUNT.fits(size):
            raise OptionError("minibatch", f"--minibatch {res}:{size}: the resolution must be a power of two from 4 "
                                           f"to 1024 and the size a whole number >= 1")
        group = min(config.mbstd_group_size, size)
        if res <= config.resolution and config.mbstd_group_size > 1 and size % group:
            larger = size + group - size % group
            raise OptionError("minibatch", f"minibatch {size} (per process) at {res}x{res} is not a multiple of "
                                           f"the minibatch-stddev group size {group}; give --minibatch "
                                           f"{res}:{larger} (or another multiple of {group}), or change "
                                           f"--mbstd-group-size")
    levels = len(config.schedule().resolutions)
    if config.fmap_base < 2 ** levels:  # the official widths: fmap_base / 2**stage channels
        raise OptionError("fmap_base", f"--fmap-base {config.fmap_base} leaves no channels at "
                                       f"{config.resolution}x{config.resolution}; use --fmap-base >= {2 ** levels}")
    try:
        parse_grid(config.grid)
    except (argparse.ArgumentTypeError, AttributeError):
        raise OptionError("grid", f"--grid expects COLSxROWS with positive numbers (e.g. 8x4), got "
                                  f"{config.grid!r}") from None


def check_environment(config: TrainConfig, resumed: bool = False) -> None:
    """What the configuration asks of this machine: the folders it reads or writes, the device and the backend
    (ValueError naming the option). Run before any work, after check_values."""
    if config.data is not None and resumed and not Path(config.data).is_dir():
        raise OptionError("data", f"the run's image folder {config.data!r} does not exist any more (moved or "
                                  f"deleted?); a resumed run trains on the same images: put them back there")
    if config.data is not None:
        cli.existing_folder("--data", config.data, "a folder of images")
    if config.cache_dir is not None:
        cli.folder_to_write("--cache-dir", config.cache_dir)
    if config.device != "auto":
        cli.device("--device", config.device)
    if config.backend in ACCELERATED:
        device = config.device if config.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        reason = unavailable_reason(config.backend, torch.device(device))
        if reason is not None:
            raise OptionError("backend", f"--backend {config.backend} cannot run on {device}: {reason}; use "
                                         f"--backend auto (or torch)")


def build_networks(config: TrainConfig, models: ModuleType = fast_models) -> Tuple[nn.Module, nn.Module]:
    """G and D of the configuration, from `models`: progan_fast.models, or progan_fast.reference for the plain
    PyTorch networks (same constructors and parameter names)."""
    G = models.Generator(config.resolution, 3, config.latent_size, config.fmap_base, config.fmap_max)
    D = models.Discriminator(config.resolution, 3, config.fmap_base, config.fmap_max,
                             mbstd_group_size=config.mbstd_group_size)
    return G, D
