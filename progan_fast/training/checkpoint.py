"""Checkpoints without pickle: weights and training tensors in safetensors, everything else in JSON.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/`:
- generator.safetensors, generator_ema.safetensors, discriminator.safetensors: the weights;
- training_state.safetensors: optimizer moments and random-generator states;
- training_state.json: images shown, step, stage, alpha, optimizer hyperparameters, loss scalers, configuration.
It is written under a temporary name and renamed into place, so a crash never leaves a half checkpoint, and only
the newest `keep` are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors.torch import load_file, save_file

WEIGHT_FILES = {"G": "generator.safetensors", "G_ema": "generator_ema.safetensors", "D": "discriminator.safetensors"}
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
PREFIX = "step-"


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


def save_checkpoint(run_dir: Path, step: int, weights: Dict[str, Dict[str, torch.Tensor]],
                    state_tensors: Dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    final = checkpoint_path(run_dir, step)
    folder = final.parent
    temporary = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for key, file in WEIGHT_FILES.items():
        save_file(cpu_tensors(weights[key]), str(temporary / file))
    save_file(cpu_tensors(state_tensors), str(temporary / STATE_TENSORS))
    (temporary / STATE_JSON).write_text(json.dumps(state, indent=1))
    os.replace(temporary, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path):
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / STATE_JSON).is_file())


def find_checkpoint(path: str) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    candidate = Path(path)
    if (candidate / STATE_JSON).is_file():
        return candidate
    found = list_checkpoints(candidate)
    if not found:
        raise FileNotFoundError(f"{path!r} is neither a checkpoint folder (with {STATE_JSON}) nor a run folder with "
                                "checkpoints/; give a run folder or one of its checkpoints/step-* folders")
    return found[-1]


def load_state(checkpoint: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    state = json.loads((checkpoint / STATE_JSON).read_text())
    return state, load_file(str(checkpoint / STATE_TENSORS))


def load_weights(checkpoint: Path, key: str, device="cpu") -> Dict[str, torch.Tensor]:
    return load_file(str(Path(checkpoint) / WEIGHT_FILES[key]), device=str(device))


def run_dir_of(checkpoint: Path) -> Path:
    return Path(checkpoint).resolve().parent.parent
