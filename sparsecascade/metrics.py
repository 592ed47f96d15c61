"""Segmentation metrics from one confusion matrix summed over a data set, and LC's stage statistics.

As mmsegmentation and torchvision's references compute them: rows are the ground truth, columns
the prediction, pixels labelled ``ignore_index`` are dropped; IoU_c = TP / (TP + FP + FN) per
class; mIoU is the mean over the classes that occur (in the ground truth or the predictions:
a class with an empty union has no IoU, NaN, and is left out); not a mean of per-image IoUs.

    cm = ConfusionMatrix(num_classes=11)
    for pred, target in batches:
        cm.update(pred, target)
    cm.miou(), cm.iou(), cm.pixel_accuracy()
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from .labelmaps import labels_at


def _check_maps(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("pred, target: expected tensors of class ids")
    if pred.shape != target.shape:
        raise ValueError(f"pred, target: expected the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred, target: expected integer class ids (take the argmax of logits first)")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: ``cm[t, p]`` pixels of class ``t`` predicted as ``p``."""
    _check_maps(pred, target)
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target: expected class ids in [0, {num_classes}) or {ignore_index} (ignored), "
                         f"got values in [{int(t.min())}, {int(t.max())}]")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"pred: expected class ids in [0, {num_classes}), got values in [{int(p.min())}, {int(p.max())}]")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (float64); NaN for a class absent from both ground truth and predictions."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over the classes that occur (NaN if no pixel was counted)."""
    iou = iou_from_confusion(cm)
    present = ~iou.isnan()
    return float(iou[present].mean()) if bool(present.any()) else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else math.nan


class ConfusionMatrix:
    """A confusion matrix accumulated over batches (and, with ``all_reduce``, over processes)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.matrix.device)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrices of every process of the default process group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)
        return self

    def iou(self) -> torch.Tensor:
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)

    def summary(self, class_names: Optional[Sequence[str]] = None) -> dict:
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        return dict(miou=self.miou(), pixel_accuracy=self.pixel_accuracy(),
                    iou={n: (None if math.isnan(v) else v) for n, v in zip(names, self.iou().tolist())})


class StageDistribution:
    """Where LC decides each class: counts of labelled pixels per (ground-truth class, deciding stage).

    ``update(stage_map, target)`` takes ``CascadeOutput.stage_map`` (N, h, w; 1-based stages at the
    output stride) and the full-resolution labels, resampled to the stage map by nearest neighbour
    as the training losses resample them. ``stop_counts`` counts every pixel, labelled or not.
    """

    def __init__(self, num_classes: int, num_stages: int, ignore_index: int = 255):
        self.num_classes, self.num_stages, self.ignore_index = num_classes, num_stages, ignore_index
        self.counts = torch.zeros(num_classes, num_stages, dtype=torch.int64)
        self.stop_counts = torch.zeros(num_stages, dtype=torch.int64)

    def update(self, stage_map: torch.Tensor, target: torch.Tensor) -> "StageDistribution":
        if stage_map.dim() != 3 or target.dim() != 3 or stage_map.shape[0] != target.shape[0]:
            raise ValueError(f"stage_map, target: expected (N, h, w) and (N, H, W), got "
                             f"{tuple(stage_map.shape)} and {tuple(target.shape)}")
        stage_map = stage_map.cpu().long()
        if stage_map.numel() and (int(stage_map.min()) < 1 or int(stage_map.max()) > self.num_stages):
            raise ValueError(f"stage_map: expected stages in [1, {self.num_stages}], got values in "
                             f"[{int(stage_map.min())}, {int(stage_map.max())}]")
        labels = labels_at(target.cpu().long(), tuple(stage_map.shape[-2:]))
        self.stop_counts += torch.bincount(stage_map.reshape(-1) - 1, minlength=self.num_stages)
        valid = labels != self.ignore_index
        idx = labels[valid] * self.num_stages + (stage_map[valid] - 1)
        self.counts += torch.bincount(idx, minlength=self.num_classes * self.num_stages).view(
            self.num_classes, self.num_stages)
        return self

    def fractions(self) -> torch.Tensor:
        """(num_classes, num_stages) float64: each class's share decided at each stage; NaN rows for absent classes."""
        totals = self.counts.sum(1, keepdim=True).double()
        return torch.where(totals > 0, self.counts.double() / totals.clamp(min=1), torch.full_like(totals, math.nan))

    def stop_fractions(self) -> list[float]:
        total = int(self.stop_counts.sum())
        return [float(c) / total if total else math.nan for c in self.stop_counts.tolist()]
