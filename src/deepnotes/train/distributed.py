"""torch.distributed plumbing for fit(): the same loop on one process or under torchrun.

`torchrun --nproc_per_node=N script.py` sets RANK, WORLD_SIZE, MASTER_ADDR and
friends; fit() then joins the process group (gloo on CPU, nccl on CUDA), wraps
the model in DistributedDataParallel and shards the data with a
DistributedSampler. Only rank 0 writes checkpoints, metrics and progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistState", "setup_distributed", "teardown_distributed", "all_mean", "any_true"]


@dataclass
class DistState:
    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False  # fit() created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: str) -> DistState:
    """Joins the process group torchrun describes; a no-op on a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistState(dist.get_rank(), dist.get_world_size(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistState()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return DistState(dist.get_rank(), dist.get_world_size(), True)


def teardown_distributed(state: DistState) -> None:
    if state.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, state: DistState, device: str) -> nn.Module:
    if not state.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def all_mean(value: float, state: DistState) -> float:
    """Mean of a float over ranks (identity on one process)."""
    if not state.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / state.world_size


def any_true(flag: bool, state: DistState) -> bool:
    if not state.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t)
    return bool(t.item())
