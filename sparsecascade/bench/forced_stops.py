"""Stop shares imposed on an LC model for benchmarks: exactly ``fractions[k]`` of all pixels stop at stage k.

Timing the cascade at the stop shares the paper reports needs them on an untrained model too, so
the confidences are set aside: the shares are installed as the model's ``stop_rule`` (see
``LayerCascade``), which stops the pixels in spatially coherent blobs (hard pixels cluster on objects
and boundaries), the same blobs on every run at one map size.

    with forced_stop_fractions(model, [0.23, 0.29]):   # stages 1 and 2 of a 3-stage model
        out = model(x)                                  # out.stop_fractions == [0.23, 0.29, 0.48]
    force_stop_fractions(model, [0.23, 0.29])           # the same, until force_stop_fractions(model, None)
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..cascade import LayerCascade

__all__ = ["ForcedStops", "coherent_stop", "force_stop_fractions", "forced_stop_fractions"]


def coherent_stop(active: torch.Tensor, fraction: float) -> torch.Tensor:
    """Stop ``fraction`` of all pixels of each image among its active ones, in coherent blobs.

    The blobs come from a smooth random field fixed by the map size (seeded), so repeated runs
    time the same masks; pixels with the lowest field values stop first.
    """
    n, h, w = active.shape
    field = _stop_field(h, w, active.device).expand(n, -1)
    count = min(round(fraction * h * w), h * w)
    ranked = torch.where(active.reshape(n, -1), field, torch.full_like(field, float("inf")))
    stop = torch.zeros(n, h * w, dtype=torch.bool, device=active.device)
    if count:
        stop.scatter_(1, ranked.topk(count, dim=1, largest=False).indices, True)
    return (stop & active.reshape(n, -1)).view(n, h, w)


@functools.lru_cache(maxsize=64)
def _stop_field(h: int, w: int, device: torch.device) -> torch.Tensor:
    """The smooth random field (1, h * w) of one map size, made once per size and device: a timed
    forward pays for ranking it, as the threshold kernel's pass, not for making it on the host and
    copying it to the GPU."""
    gen = torch.Generator().manual_seed(h * 10007 + w)
    field = torch.rand(1, 1, max(2, h // 8), max(2, w // 8), generator=gen)
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False).reshape(1, -1)
    return (field + 1e-6 * torch.rand(1, h * w, generator=gen)).to(device)


class ForcedStops:
    """A ``LayerCascade.stop_rule``: at stage k, ``coherent_stop(active, fractions[k])``, whatever the logits."""

    def __init__(self, fractions: Sequence[float], num_stages: int):
        fractions = [float(f) for f in fractions]
        if len(fractions) != num_stages - 1 or min(fractions, default=0.0) < 0 or sum(fractions) > 1:
            raise ValueError(f"fractions: expected {num_stages - 1} shares >= 0 summing to <= 1, got {fractions}")
        self.fractions = fractions

    def __call__(self, logits: torch.Tensor, active: torch.Tensor, k: int) -> torch.Tensor:
        return coherent_stop(active, self.fractions[k])

    def __repr__(self) -> str:
        return f"ForcedStops({self.fractions})"


def force_stop_fractions(model: LayerCascade, fractions: Optional[Sequence[float]]) -> LayerCascade:
    """Stop exactly ``fractions[k]`` of all pixels at stage k (k < K) from now on, in spatially coherent blobs,
    whatever the confidences; None restores the confidence threshold. Returns ``model``."""
    if not isinstance(model, LayerCascade):
        raise TypeError(f"model: expected a LayerCascade, got {type(model).__name__}")
    model.stop_rule = None if fractions is None else ForcedStops(fractions, model.num_stages)
    return model


@contextlib.contextmanager
def forced_stop_fractions(model: LayerCascade, fractions: Optional[Sequence[float]]) -> Iterator[LayerCascade]:
    """``force_stop_fractions`` for the ``with`` block; the model's previous stop rule afterwards."""
    previous = model.stop_rule
    try:
        yield force_stop_fractions(model, fractions)
    finally:
        model.stop_rule = previous
