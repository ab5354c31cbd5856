"""DistributedDataParallel primitives for the training loop: join the process group when started by torchrun,
gather and broadcast Python objects between ranks, leave the group. (Launching the ranks: lmforge.training.distributed.)"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int


def setup(device: str) -> Rank | None:
    """Join the process group when started by torchrun with more than one process (nccl on CUDA, gloo
    elsewhere); None in a plain single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world_size <= 1:
        return None
    me = Rank(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(me.local_rank)  # "cuda" below means this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return me


def gather(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


