"""torchrun + DistributedDataParallel plumbing (torchvision references' ``init_distributed_mode``).

``torchrun --nproc-per-node N -m structconv.cli train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; each process is one rank.  The backend is NCCL on GPUs and gloo on CPU.
Multi-node: the usual ``torchrun --nnodes M --node-rank K --rdzv-endpoint HOST:PORT`` flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .validation import ArgumentError

__all__ = ["DistContext", "parse_device", "init_distributed", "wrap", "barrier", "cleanup"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_device(device: str, name: str = "device") -> torch.device:
    """``torch.device(device)`` if this machine has it, else a one-line
    :class:`~structconv.validation.ArgumentError` naming argument ``name``."""
    field = "{%s}={value}" % name
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(field + " is not a device name (cpu, cuda, cuda:1, ...)", value=repr(device)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(field + ": no CUDA device is available here", value=repr(device))
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ArgumentError(
            field + ": this machine has {n} CUDA device(s)", value=repr(device), n=torch.cuda.device_count()
        )
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError(field + ": structconv runs on cpu or cuda", value=repr(device))
    return dev


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group when launched by torchrun; a single-process context otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=torch.device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, local_world, dev)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
