"""torchrun plumbing shared by training, batch inference and evaluation.

``torchrun --nproc_per_node N`` (or across nodes) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a
plain ``python`` run is one process and every helper here degrades to a no-op. NCCL is used on
CUDA (one device per rank: ``cuda:LOCAL_RANK``), gloo on CPU.

It lives in ``inference`` (the lowest layer that runs models) so that inference, evaluation and
training (which imports it from here) share one copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import UserError
from ..model import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "gather_to_main",
    "init_distributed",
    "path_bytes",
    "shard_by_size",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str | None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    wanted = resolve_device(device_spec)
    if wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank {rank}: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **({"device_id": device} if backend == "nccl" else {}))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend), device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place) when distributed; returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (picklable) on rank 0, in rank order; ``None`` on the other ranks.

    Not distributed: ``[obj]``. Uses ``gather_object``, which works on gloo and NCCL alike.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard_by_size(sizes: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``world_size`` shards of about equal total size.

    Largest first, each to the currently lightest shard (greedy LPT: at most 4/3 of the best
    makespan); ties go to the lower rank, so every rank computes the same split. Each shard is
    returned in input order, so a rank processes its inputs in the order a one-process run would.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    load = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-float(sizes[i]), i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        shards[r].append(i)
        load[r] += max(float(sizes[i]), 1.0)  # empty files still cost a read: count them
    return [sorted(s) for s in shards]


def path_bytes(*paths: str | Path | None) -> int:
    """Bytes on disk of files and folders (a DICOM series: all its files): the work estimate
    :func:`shard_by_size` balances. Missing paths count 0 (they fail fast wherever they land)."""
    total = 0
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        try:
            total += (
                sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
            )
        except OSError as exc:  # gone or unreadable: it weighs nothing here, and the batch reports it
            logger.debug("size of %s unknown: %s", path, exc)
    return total
