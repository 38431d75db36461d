"""Data parallelism across processes started by torchrun (NCCL on GPUs, gloo on CPU).

Gradients are averaged with one all-reduce of a flat buffer per network and step, after the whole backward
(the D step's double backward for the gradient penalty included), so every process applies the same update.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed":
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group if there is more than one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and world_size > 1:
            device = f"cuda:{local_rank}"
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
        if chosen.type == "cuda" and chosen.index is not None:
            torch.cuda.set_device(chosen)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        return cls(rank, world_size, chosen)

    def broadcast_parameters(self, modules: Iterable[torch.nn.Module]) -> None:
        if self.world_size > 1:
            for module in modules:
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the mean of `tensor` over all processes."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
            tensor.div_(self.world_size)
        return tensor

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(chunk.view(grad.shape))

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
