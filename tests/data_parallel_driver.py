"""The trainer run step by step for the data-parallel test (test_train.py), recording after every step what this
process used and holds: its slice of the reals, its slices of the random draws (latents, the penalty's mixing
factors), the gradients it applied (averaged over the processes) and its weights.

Under torchrun: `python -m torch.distributed.run --nproc_per_node N tests/data_parallel_driver.py RECORD OPTIONS...`
runs the trainer with OPTIONS twice in the same processes: with frozen weights (Adam's learning rate set to 0
after the options' checks, which ask for > 0, so the gradients of every step are those of the same weights) into
RECORD-frozen-rank<r>.safetensors, and as given (training) into RECORD-training-rank<r>.safetensors.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Dict, List

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from progan_fast.train import config_from_args
from progan_fast.training.loop import Trainer

NETWORKS = ("G", "D", "G_ema")


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def train_and_record(options: List[str], frozen: bool = False) -> Dict[str, torch.Tensor]:
    """Train with command-line OPTIONS (frozen: with learning rate 0); per step k (from 1): `k/reals`, `k/draw<i>`,
    `k/grad_<net>` for G and D (the gradients of the parameters that had one) and `k/weights` (G, D and the EMA of
    G)."""
    config, _ = config_from_args(options)
    trainer = Trainer(config)
    gan, record, draws = trainer.gan, {}, []
    if frozen:  # the optimizers of every resolution are made from gan.config
        gan.config = dataclasses.replace(gan.config, lr=0.0)
    draw, batch, train_step = gan._draw, trainer.data.batch, trainer.train_step

    def recorded_draw(*args, **kwargs):
        draws.append(draw(*args, **kwargs))
        return draws[-1]

    def recorded_batch(*args):
        reals = batch(*args)
        record[f"{trainer.step + 1}/reals"] = reals.contiguous().clone()
        return reals

    def recorded_step(phase):
        train_step(phase)
        step = trainer.step
        for index, values in enumerate(draws):
            record[f"{step}/draw{index}"] = values.contiguous().clone()
        draws.clear()
        for name in ("G", "D"):
            record[f"{step}/grad_{name}"] = flat(p.grad for p in getattr(gan, name).parameters() if p.grad is not None)
        record[f"{step}/weights"] = flat(p for name in NETWORKS for p in getattr(gan, name).parameters())

    gan._draw, trainer.data.batch, trainer.train_step = recorded_draw, recorded_batch, recorded_step
    trainer.run()
    return record


def main(argv: List[str]) -> None:
    prefix, options = argv[0], argv[1:]
    for label in ("frozen", "training"):
        record = train_and_record(options + ["--out", f"{prefix}-{label}"], frozen=label == "frozen")
        save_file(record, f"{prefix}-{label}-rank{dist.get_rank() if dist.is_initialized() else 0}.safetensors")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
