"""Losses of LC training and of the paper's baselines, on ``CascadeTrainOutput``.

Each stage's loss is a pixel-wise softmax cross-entropy at the stage's own resolution, the labels
resampled to it by nearest neighbour (as DeepLab trains at output stride 8), averaged over the
labelled pixels the stage is responsible for; the stage losses are summed.

- ``dsn_loss``: every stage on every labelled pixel (initial training; rho = 1).
- ``cascade_loss``: stage k only on the pixels forwarded to it (stage 1: all).
- ``dropout_dsn_loss``: DSN with each stage's labels randomly dropped at given ratios (the baseline
  that matches LC's drop ratio without using difficulty).
- ``plain_loss``: the last stage's head alone (the plain network).

Every loss takes optional ``class_weights`` (one positive number per class, e.g. median-frequency
balancing for data sets with thin rare classes); the mean is then torch's weighted mean.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .cascade import CascadeTrainOutput
from .labelmaps import labels_at


def _stage_loss(logits, target, region, ignore_index, class_weights=None):
    labels = labels_at(target, tuple(logits.shape[-2:]))
    if region is not None:
        labels = labels.masked_fill(~region, ignore_index)
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0  # no labelled pixel in the region: zero, still in the graph
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
    # with class weights, the mean is over the pixels' weights (torch's weighted mean)
    return F.cross_entropy(logits.float(), labels, weight=class_weights, ignore_index=ignore_index)


def _check_weights(class_weights, num_classes):
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32)
    if w.shape != (num_classes,) or not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"class_weights: expected {num_classes} positive finite numbers, got {class_weights!r}")
    return w


def _check(out, target):
    if not isinstance(out, CascadeTrainOutput):
        raise TypeError(f"out: expected the CascadeTrainOutput of a LayerCascade in train mode, got {type(out).__name__}")
    if not isinstance(target, torch.Tensor) or target.dim() != 3 or target.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"target: expected an integer label map (N, H, W), got {getattr(target, 'shape', target)!r}")
    target = target.long()
    return target


def dsn_loss(out: CascadeTrainOutput, target: torch.Tensor, ignore_index: int = 255,
             class_weights=None) -> torch.Tensor:
    """Sum over stages of the cross-entropy on every labelled pixel."""
    target = _check(out, target)
    w = _check_weights(class_weights, out.stage_logits[0].shape[1])
    return sum(_stage_loss(logits, target, None, ignore_index, w) for logits in out.stage_logits)


def cascade_loss(out: CascadeTrainOutput, target: torch.Tensor, ignore_index: int = 255,
                 class_weights=None) -> torch.Tensor:
    """Sum over stages of the cross-entropy on the labelled pixels forwarded to each stage."""
    target = _check(out, target)
    w = _check_weights(class_weights, out.stage_logits[0].shape[1])
    return sum(_stage_loss(l, target, r, ignore_index, w) for l, r in zip(out.stage_logits, out.regions))


def dropout_dsn_loss(out: CascadeTrainOutput, target: torch.Tensor, drop_ratios: Sequence[float],
                     ignore_index: int = 255, generator: Optional[torch.Generator] = None,
                     class_weights=None) -> torch.Tensor:
    """DSN loss where stage k ignores a random ``drop_ratios[k]`` share of the pixels (stage 1 usually 0)."""
    target = _check(out, target)
    weights = _check_weights(class_weights, out.stage_logits[0].shape[1])
    if len(drop_ratios) != len(out.stage_logits):
        raise ValueError(f"drop_ratios: expected one ratio per stage ({len(out.stage_logits)}), got {len(drop_ratios)}")
    total = 0.0
    for logits, ratio in zip(out.stage_logits, drop_ratios):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"drop_ratios: expected values in [0, 1], got {ratio!r}")
        n, _, h, w = logits.shape
        keep = torch.rand(n, h, w, generator=generator, device="cpu").to(logits.device) >= ratio
        total = total + _stage_loss(logits, target, keep, ignore_index, weights)
    return total


def plain_loss(out: CascadeTrainOutput, target: torch.Tensor, ignore_index: int = 255,
               class_weights=None) -> torch.Tensor:
    """The last stage's cross-entropy alone: the plain network with one head."""
    target = _check(out, target)
    w = _check_weights(class_weights, out.stage_logits[-1].shape[1])
    return _stage_loss(out.stage_logits[-1], target, None, ignore_index, w)
