"""Crash-safe checkpoints without pickle: weights and training tensors in safetensors, everything else in JSON.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/`:
- generator.safetensors, generator_ema.safetensors, discriminator.safetensors: the weights;
- training_state.safetensors: optimizer moments and random-generator states;
- training_state.json: images shown, step, stage, alpha, optimizer hyperparameters, loss scalers, configuration;
- manifest.json, written last: the byte size and SHA-256 of every other file.

The files are written and fsynced in a hidden temporary folder (`.tmp-step-...`) that is then renamed into place,
so a folder under a final name is always complete; loading checks every file against the manifest before parsing
it. Old checkpoints are renamed to a hidden `.trash-...` name before they are deleted, and hidden leftovers of a
killed write or deletion are removed when the next run starts in the folder (run_folder.py); a resume renames
checkpoints newer than the one it starts from to `set-aside-step-...`. Nothing here unpickles: safetensors and
JSON only, so loading a file never runs code from it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as safetensors_bytes

WEIGHT_FILES = {"G": "generator.safetensors", "G_ema": "generator_ema.safetensors", "D": "discriminator.safetensors"}
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "progan_fast checkpoint"
MANIFEST_VERSION = 1
PREFIX = "step-"
STATE_KEYS = ("step", "images_shown", "resolution", "alpha", "ticks", "optimizer_resolution", "optimizers",
              "scalers", "skipped_steps", "stage_speed", "swd", "config")
TEMPORARY_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
SET_ASIDE_PREFIX = "set-aside-"
# Seconds to sleep after each file of a checkpoint write; crash tests use it to land kills inside a write.
WRITE_DELAY_ENV = "PROGAN_FAST_CHECKPOINT_WRITE_DELAY"
HOW_TO_RESUME = "give a run folder or one of its checkpoints/step-XXXXXXXX folders"


class CheckpointError(Exception):
    """No usable checkpoint at a path (missing, damaged, foreign or incompatible); the message says which and what
    to give instead. Every command that takes a checkpoint reports it as a bad argument (exit status 2)."""


def cpu_tensors(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", memory_format=torch.contiguous_format).contiguous()
            for name, t in tensors.items()}


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and the rest (for JSON)."""
    state = optimizer.state_dict()
    tensors, keys = {}, {}
    for index, entries in state["state"].items():
        keys[str(index)] = list(entries)
        for name, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name!r} is not a tensor; it cannot be stored without pickle")
            tensors[f"{prefix}.{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "state_keys": keys}


def optimizer_from_flat(tensors: Dict[str, torch.Tensor], meta: dict, prefix: str) -> dict:
    state = {int(index): {name: tensors[f"{prefix}.{index}.{name}"] for name in names}
             for index, names in meta["state_keys"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------------
# Writing.

def _write_and_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    if os.name == "posix":  # folders cannot be opened for fsync on Windows; the rename is atomic there too
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def replace_atomically(path: Path, write) -> None:
    """Call write(temporary path), then rename it to `path`: readers see the old file or the new one, never a
    part of one. Not fsynced: after a power loss the file may be the old one or missing, which suits files that
    training does not read back (sample grids). The temporary name keeps the extension (image writers pick the
    format from it)."""
    path = Path(path)
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")
    write(temporary)
    os.replace(temporary, path)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, fsyncing the file and its folder: once this returns, the new file
    survives a power loss."""
    replace_atomically(path, lambda temporary: _write_and_fsync(temporary, data))
    _fsync_folder(Path(path).parent)


def save_checkpoint(run_dir: Path, step: int, weights: Dict[str, Dict[str, torch.Tensor]],
                    state_tensors: Dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    final = checkpoint_path(run_dir, step)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{TEMPORARY_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        _write_checkpoint_files(temporary, step, weights, state_tensors, state)
    except BaseException:  # a full disk, a signal: no half-written folder stays behind
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    os.replace(temporary, final)
    _fsync_folder(folder)
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    return final


def _write_checkpoint_files(temporary: Path, step: int, weights: Dict[str, Dict[str, torch.Tensor]],
                            state_tensors: Dict[str, torch.Tensor], state: dict) -> None:
    serializers = {file: lambda key=key: safetensors_bytes(cpu_tensors(weights[key]))
                   for key, file in WEIGHT_FILES.items()}
    serializers[STATE_TENSORS] = lambda: safetensors_bytes(cpu_tensors(state_tensors))
    serializers[STATE_JSON] = lambda: json.dumps(state, indent=1).encode()
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0"))
    files = {}
    for name, serialize in serializers.items():  # one file in memory at a time
        data = serialize()
        _write_and_fsync(temporary / name, data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        time.sleep(delay)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step, "files": files}
    _write_and_fsync(temporary / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync_folder(temporary)


def _remove(folder: Path) -> None:
    """Rename first (atomic), then delete: a crash midway leaves a hidden leftover, never a partial checkpoint."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def set_aside_newer(run_dir: Path, step: int) -> List[Tuple[Path, Path]]:
    """Rename the checkpoints after `step` (damaged ones that a resume skipped, or a later timeline when resuming
    an older checkpoint) to checkpoints/set-aside-step-*, so that new checkpoints neither collide with them nor
    get pruned in their favour. Returns (old, new) paths."""
    moved = []
    for folder in list_checkpoints(run_dir):
        if int(folder.name[len(PREFIX):]) > step:
            target = folder.with_name(SET_ASIDE_PREFIX + folder.name)
            suffix = 1
            while target.exists():
                target = folder.with_name(f"{SET_ASIDE_PREFIX}{folder.name}.{suffix}")
                suffix += 1
            os.replace(folder, target)
            moved.append((folder, target))
    return moved


# ------------------------------------------------------------------------------------------------
# Finding and verifying.

def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path) -> List[Path]:
    """The step-* folders of a run, oldest first (complete or not: see verify)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and p.is_dir())


def _manifest(checkpoint: Path) -> dict:
    where = Path(checkpoint)
    if not where.exists():
        raise CheckpointError(f"no checkpoint at {str(where)!r}: the path does not exist, so it is neither a "
                              f"checkpoint folder nor a run folder; {HOW_TO_RESUME}")
    if not where.is_dir():
        raise CheckpointError(f"{str(where)!r} is a file, not a progan_fast checkpoint (a folder with {MANIFEST}, "
                              f"safetensors and JSON files; pickles such as .pt/.pkl are never loaded); "
                              f"{HOW_TO_RESUME}")
    path = where / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{str(where)!r} is not a complete progan_fast checkpoint: it has no {MANIFEST} "
                              f"(not a checkpoint folder, or written by an older version); {HOW_TO_RESUME}")
    try:
        manifest = json.loads(path.read_bytes())
        files = manifest["files"]
        valid = manifest["format"] == MANIFEST_FORMAT and all(
            isinstance(entry["bytes"], int) and isinstance(entry["sha256"], str) for entry in files.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise CheckpointError(f"{str(path)!r} is not a progan_fast checkpoint manifest (damaged or foreign); "
                              f"resume from another checkpoint: {HOW_TO_RESUME}")
    if manifest["version"] > MANIFEST_VERSION:
        raise CheckpointError(f"{str(where)!r} was written by a newer progan_fast (checkpoint format version "
                              f"{manifest['version']}, this one reads {MANIFEST_VERSION}); upgrade progan_fast")
    return manifest


def _damaged(checkpoint: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(checkpoint)!r} is damaged: {problem}. Resume from an earlier "
                           f"checkpoint of the run (its checkpoints/ folder), or from the run folder, which skips "
                           f"damaged checkpoints")


def _verified_bytes(checkpoint: Path, name: str, manifest: Optional[dict] = None) -> bytes:
    """The content of one file of a checkpoint, after checking its size and SHA-256 against the manifest."""
    manifest = manifest or _manifest(checkpoint)
    entry = manifest["files"].get(name)
    if entry is None:
        raise _damaged(checkpoint, f"its {MANIFEST} does not list {name}")
    path = Path(checkpoint) / name
    if not path.is_file():
        raise _damaged(checkpoint, f"{name} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:  # before reading: a file planted in its place may be of any size
        raise _damaged(checkpoint, f"{name} has {size} bytes, its manifest says {entry['bytes']} "
                                   f"(cut short or overwritten)")
    try:
        data = path.read_bytes()
    except MemoryError:
        raise _damaged(checkpoint, f"{name} has {size} bytes, more than this machine can hold in memory (far "
                                   f"more than any network needs: the file was replaced)") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _damaged(checkpoint, f"the SHA-256 of {name} does not match its manifest (the file changed)")
    return data


def verify(checkpoint: Path) -> None:
    """Raise CheckpointError unless every file of the checkpoint is present and matches the manifest."""
    manifest = _manifest(checkpoint)
    for name in list(WEIGHT_FILES.values()) + [STATE_TENSORS, STATE_JSON]:
        _verified_bytes(checkpoint, name, manifest)


def find_checkpoint(path: str, warn=print) -> Path:
    """A verified checkpoint: the folder itself, or the newest complete checkpoint of a run folder (each damaged
    newer one is skipped with a warning through `warn`)."""
    candidate = Path(path)
    if (candidate / MANIFEST).exists() or candidate.is_file() or not candidate.exists():
        verify(candidate)
        return candidate
    found = list_checkpoints(candidate)
    if not found:
        raise CheckpointError(f"{path!r} is neither a checkpoint folder (with {MANIFEST}) nor a run folder with "
                              f"checkpoints/step-* folders; {HOW_TO_RESUME}")
    problems = []
    for checkpoint in reversed(found):
        try:
            verify(checkpoint)
        except CheckpointError as error:
            warn(f"warning: skipping {error}")
            problems.append(str(error))
            continue
        return checkpoint
    raise CheckpointError(f"run folder {path!r} has no complete checkpoint: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Loading (safetensors and JSON only).

def _parse_safetensors(checkpoint: Path, name: str, device="cpu") -> Dict[str, torch.Tensor]:
    data = _verified_bytes(checkpoint, name)
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{str(Path(checkpoint) / name)!r} is not a valid safetensors file ({error}); "
                              f"resume from another checkpoint: {HOW_TO_RESUME}") from None
    return {key: value.to(device) for key, value in tensors.items()}


def load_state(checkpoint: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    data = _verified_bytes(checkpoint, STATE_JSON)
    try:
        state = json.loads(data)
        if not isinstance(state, dict):
            raise TypeError("the JSON is not an object")
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{str(Path(checkpoint) / STATE_JSON)!r} is not a progan_fast training state "
                              f"({error}); resume from another checkpoint: {HOW_TO_RESUME}") from None
    return state, _parse_safetensors(checkpoint, STATE_TENSORS)


def load_weights(checkpoint: Path, key: str, device="cpu") -> Dict[str, torch.Tensor]:
    return _parse_safetensors(checkpoint, WEIGHT_FILES[key], device)


def check_fits(module: torch.nn.Module, weights: Dict[str, torch.Tensor], checkpoint: Path, key: str) -> None:
    """Raise CheckpointError naming the first tensor of `weights` that does not fit `module` (other resolution
    or widths than the configuration stored with it)."""
    expected = module.state_dict()
    where = str(Path(checkpoint) / WEIGHT_FILES[key])
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where!r} does not fit the network of the checkpoint's configuration: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]} (other resolution or another "
                              f"network); the checkpoint's files do not belong together; resume from another "
                              f"checkpoint: {HOW_TO_RESUME}")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise CheckpointError(f"{where!r} does not fit the network of the checkpoint's configuration: "
                                  f"{name} has shape {tuple(weights[name].shape)}, the network needs "
                                  f"{tuple(tensor.shape)} (other widths: --fmap-base/--fmap-max/--latent-size); "
                                  f"the checkpoint's files do not belong together; resume from another "
                                  f"checkpoint: {HOW_TO_RESUME}")
