"""DistributedDataParallel plumbing: the same ``pneumo train`` under ``torchrun --nproc_per_node N``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; we then use gloo on CPU and NCCL on GPU. Only rank 0
writes files and builds the image cache first (the others wait on a barrier, then read it). Validation logits are
gathered from every rank as (index, logits) pairs and de-duplicated, so the padding ``DistributedSampler``-style
sharding adds never counts twice and the gathered set is exactly the validation set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun asked for (single process when its variables are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds the cache); the others then run it (and find the work done)."""
    if not info.is_main:
        barrier()
    yield
    if info.is_main:
        barrier()


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank holds running
    statistics updated by its own batch. Validation and the saved weights must use one set: rank 0's, which is
    what gets saved (timm's ``distribute_bn`` does the same with ``reduce=False``).
    """
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value of ``obj`` on every rank (plain data only)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for a single process)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def gather_logits(indices: torch.Tensor, logits: torch.Tensor, n_total: int, info: DistInfo) -> np.ndarray:
    """Gather every rank's (index, logits) rows and return an ``n_total x K`` array in index order.

    Each rank holds the same number of rows (padded shards), so a plain ``all_gather`` of tensors works; padding
    duplicates carry indices already seen and are dropped.
    """
    if not info.enabled:
        out = np.empty((n_total, logits.shape[1]), dtype=np.float32)
        out[indices.cpu().numpy()] = logits.float().cpu().numpy()
        return out
    device = logits.device
    idx = indices.to(device=device, dtype=torch.int64)
    vals = logits.float()
    idx_all = [torch.empty_like(idx) for _ in range(info.world)]
    val_all = [torch.empty_like(vals) for _ in range(info.world)]
    dist.all_gather(idx_all, idx)
    dist.all_gather(val_all, vals)
    idx_np = torch.cat(idx_all).cpu().numpy()
    val_np = torch.cat(val_all).cpu().numpy()
    _, first = np.unique(idx_np, return_index=True)
    if len(first) != n_total:
        raise RuntimeError(f"gathered {len(first)} distinct validation rows, expected {n_total}")
    out = np.empty((n_total, vals.shape[1]), dtype=np.float32)
    out[idx_np[first]] = val_np[first]
    return out


def all_reduce_mean(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Mean over ranks of a few scalars (e.g. the epoch's training loss)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world).tolist()
