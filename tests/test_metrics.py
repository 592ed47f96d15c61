"""Confusion-matrix metrics against hand-computed values and a brute-force reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecascade.metrics import (
    ConfusionMatrix, StageDistribution, confusion_matrix, iou_from_confusion, mean_iou, pixel_accuracy,
)

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


def test_hand_computed_confusion_matrix():
    cm = confusion_matrix(PRED, TARGET, 3)
    # rows: ground truth, columns: prediction; the ignored pixel (predicted 0) is dropped
    assert cm.tolist() == [[1, 1, 0],
                           [0, 1, 1],
                           [0, 0, 1]]
    # IoU = TP / (GT + Pred - TP): class 0: 1/(2+1-1), class 1: 1/(2+2-1), class 2: 1/(1+2-1)
    torch.testing.assert_close(iou_from_confusion(cm), torch.tensor([0.5, 1 / 3, 0.5], dtype=torch.float64))
    assert mean_iou(cm) == pytest.approx(4 / 9)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_absent_classes():
    # class 3 in neither labels nor predictions: no IoU, left out of the mean
    cm = confusion_matrix(PRED, TARGET, 4)
    iou = iou_from_confusion(cm)
    assert math.isnan(iou[3]) and mean_iou(cm) == pytest.approx(4 / 9)
    # a class predicted but never labelled occurs: IoU 0, in the mean
    pred = PRED.clone()
    pred[0, 0] = 3
    cm = confusion_matrix(pred, TARGET, 4)
    assert cm[0].tolist() == [0, 1, 0, 1]
    assert iou_from_confusion(cm)[3] == 0.0
    assert mean_iou(cm) == pytest.approx((0.0 + 1 / 3 + 0.5 + 0.0) / 4)


def test_summed_over_batches_not_averaged_per_image():
    """One matrix over the data set: image 2 (a perfect 1-pixel image) barely moves the mIoU."""
    m = ConfusionMatrix(3)
    m.update(PRED[None], TARGET[None])
    m.update(torch.tensor([[[2]]]), torch.tensor([[[2]]]))
    # class 2: TP 2, GT 2, Pred 3 -> 2/3; classes 0 and 1 as before
    assert m.miou() == pytest.approx((0.5 + 1 / 3 + 2 / 3) / 3)
    assert m.pixel_accuracy() == pytest.approx(4 / 6)
    s = m.summary(["a", "b", "c"])
    assert s["iou"]["c"] == pytest.approx(2 / 3) and s["miou"] == pytest.approx(m.miou())


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), c=st.integers(1, 5))
def test_against_brute_force(seed, n, c):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c + 1, (n, 4, 5))
    target[target == c] = 255
    pred = rng.integers(0, c, (n, 4, 5))
    want = np.zeros((c, c), np.int64)
    for t, p in zip(target.flat, pred.flat):
        if t != 255:
            want[t, p] += 1
    m = ConfusionMatrix(c)
    for i in range(n):  # image by image
        m.update(torch.from_numpy(pred[i]), torch.from_numpy(target[i]))
    assert m.matrix.tolist() == want.tolist()
    ious = [want[k, k] / (want[k].sum() + want[:, k].sum() - want[k, k])
            for k in range(c) if want[k].sum() + want[:, k].sum() > 0]
    if ious:
        assert m.miou() == pytest.approx(np.mean(ious))
    else:
        assert math.isnan(m.miou())


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(PRED[:1], TARGET, 3)
    with pytest.raises(ValueError, match=r"target: expected class ids in \[0, 2\)"):
        confusion_matrix(PRED, TARGET, 2)
    with pytest.raises(ValueError, match=r"pred: expected class ids in \[0, 3\)"):
        confusion_matrix(PRED + 3, TARGET, 3)
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(PRED.float(), TARGET, 3)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_stage_distribution_hand_computed():
    stage_map = torch.tensor([[[1, 2], [3, 1]]])
    target = torch.full((1, 4, 4), 2)
    # nearest 4x4 -> 2x2 keeps rows/columns 0 and 2
    target[0, 0, 0], target[0, 0, 2], target[0, 2, 0], target[0, 2, 2] = 0, 1, 255, 0
    d = StageDistribution(num_classes=3, num_stages=3).update(stage_map, target)
    assert d.counts.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    f = d.fractions()
    assert f[0].tolist() == [1.0, 0.0, 0.0] and f[1].tolist() == [0.0, 1.0, 0.0] and torch.isnan(f[2]).all()
    assert d.stop_fractions() == [0.5, 0.25, 0.25]  # every pixel, the ignored one too
    d.update(torch.tensor([[[3]]]), torch.tensor([[[0]]]))
    assert d.counts[0].tolist() == [2, 0, 1]
    assert d.fractions()[0].tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    with pytest.raises(ValueError, match=r"stage_map: expected stages in \[1, 3\]"):
        d.update(torch.tensor([[[0]]]), torch.tensor([[[0]]]))
