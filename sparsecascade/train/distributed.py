"""Data parallel: the process group from torchrun's environment, the device, the resumable
sampler (DistributedSampler's order from any step) with the data set wrapper its keys go through,
and what makes N processes train as one:

- the loss: each stage's cross-entropy is a mean over the labelled pixels of the *global* batch
  (their count all-reduced), not an average of per-process means over different counts;
- every trainable parameter takes part in every step's graph (a stage that ran on no pixel of this
  process's batch with weight 0), so DDP needs no search for unused parameters;
- parameter strides equal to the strides of their gradients, as DDP's buckets expect.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
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


class KeyedDataset(Dataset):
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
    owns_group: bool = False  # this run initialised the process group (and destroys it when the run ends well)

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


def broadcast_from_main(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every process (a collective), so that all take the same decision."""
    if ctx.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def global_mean_loss(terms: Sequence, num_stages: int, ctx: DistContext) -> tuple[torch.Tensor, float]:
    """(the loss to back-propagate, the global loss's value) from this process's stage terms
    (``phases.StageTerm``: a mean ``loss`` over ``weight`` labelled pixels of stage ``stage``).

    DDP averages gradients over the W processes, so each stage's term is scaled by
    ``W * weight / global weight``: the gradient is then that of the stage's mean over the labelled
    pixels of all processes, as one process with the whole batch computes it."""
    device = terms[0].loss.device if terms else torch.device("cpu")
    sums = torch.zeros(2, num_stages, dtype=torch.float64, device=device)  # [labelled weight, loss * weight]
    for t in terms:
        sums[0, t.stage] += t.weight.to(device)
        sums[1, t.stage] += t.loss.detach().to(torch.float64) * t.weight.to(device)
    if ctx.world_size > 1:
        dist.all_reduce(sums)
    weight, weighted_loss = sums[0], sums[1]
    counted = weight > 0
    value = float((weighted_loss[counted] / weight[counted]).sum())
    scale = [float(ctx.world_size * t.weight / weight[t.stage]) if weight[t.stage] > 0 else 0.0 for t in terms]
    loss = sum((t.loss * s for t, s in zip(terms, scale)), torch.zeros((), device=device))
    return loss, value


def unused_parameters_term(model: nn.Module, stages_run: int) -> torch.Tensor:
    """0 times the trainable parameters of the stages (and heads) that did not run in this process's
    forward: they take part in the backward with zero gradients, as on the processes where they ran."""
    params = [p for part in (model.stages, model.heads) for module in list(part)[stages_run:]
              for p in module.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return sum(p.sum() for p in params) * 0.0


def gradient_strides(model: nn.Module) -> nn.Module:
    """Give every 4-d parameter that is channels_last in memory the canonical channels_last strides.

    A 1x1 kernel (C_out, C_in, 1, 1) is both contiguous and channels_last, so converting it keeps
    its contiguous strides, but the convolution's backward returns its gradient with channels_last
    strides; DDP builds its gradient buckets with the parameter's strides and warns at every run
    about the mismatch (and copies). Same memory, same values: only the strides change."""
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
            canonical = torch.empty_like(p, memory_format=torch.channels_last).stride()
            if p.stride() != canonical:
                p.data = p.data.clone(memory_format=torch.channels_last)
    return model
