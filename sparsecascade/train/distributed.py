"""Data parallel: the process group from torchrun's environment, the device, and the resumable
sampler (DistributedSampler's order from any step) with the data set wrapper its keys go through."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..data import SegmentationDataset


class ResumableSampler(Sampler):
    """DistributedSampler's order (a shuffle seeded by seed + epoch; this rank's every world-th
    index; the tail dropped so that every rank gets as many), from sample ``start`` of ``epoch``.

    Yields ``(epoch, index)`` keys: the data set seeds the sample's augmentation with them.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, epoch: int, start: int = 0):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.inner.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        for i, index in enumerate(self.inner):
            if i >= self.start:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class _Keyed(Dataset):
    """Passes ``(epoch, index)`` to data sets that seed by it, the index alone to any other."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.keyed = isinstance(dataset, SegmentationDataset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key] if self.keyed else self.dataset[key[1]]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run initialised the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def resolve_device(device: str, ctx: DistContext) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{ctx.local_rank}")
    return dev
