"""Training options of the lc-vgg16-camvid recipe: the learning-rate group of the backbone's new
layers, median-frequency class weights and the class-weighted losses, each against a hand
computation or torch's own unweighted / weighted cross-entropy."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsecascade as sc
from sparsecascade.cascade import CascadeTrainOutput
from sparsecascade.train import TrainConfig, make_optimizer, median_frequency_weights


def test_new_backbone_layers_learn_at_the_heads_rate():
    model = sc.create_model("lc_vgg16", num_classes=5)
    opt = make_optimizer(model, TrainConfig(lr=0.002, head_lr_mult=10.0))
    group_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    stage3 = model.stages[2]
    assert group_of[id(stage3.fc6.weight)] == pytest.approx(0.02)
    assert group_of[id(stage3.fc7.bias)] == pytest.approx(0.02)
    assert group_of[id(getattr(stage3.features, "24").weight)] == pytest.approx(0.002)  # conv5_1: pretrained
    assert group_of[id(model.heads[0][0].weight)] == pytest.approx(0.02)
    assert len(group_of) == len(list(model.parameters()))  # every parameter in exactly one group


def test_a_backbone_without_new_layers_keeps_two_plain_groups():
    model = sc.create_model("lc_resnet18", num_classes=3)
    opt = make_optimizer(model, TrainConfig(lr=0.01))
    assert [len(g["params"]) for g in opt.param_groups] == [len(list(model.stages.parameters())),
                                                            len(list(model.heads.parameters()))]


class _Labels:
    """The part of a SegmentationDataset that median_frequency_weights reads."""

    num_classes = 3

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def load(self, i):
        return None, np.asarray(self.labels[i], np.uint8)


def test_median_frequency_weights_by_hand():
    # image 0: 6 pixels of class 0, 2 of class 1, 4 void; image 1: 2 of class 0, 2 of class 2
    data = _Labels([[[0, 0, 0, 0], [0, 0, 1, 1], [255, 255, 255, 255]],
                    [[0, 2], [0, 2]]])
    # f_c = pixels of c / labelled pixels of the images holding c
    f0, f1, f2 = 8 / 12, 2 / 8, 2 / 4
    med = sorted([f0, f1, f2])[1]
    assert median_frequency_weights(data) == pytest.approx([med / f0, med / f1, med / f2], abs=1e-4)
    assert median_frequency_weights(data, power=0.5) == pytest.approx(
        [math.sqrt(med / f0), math.sqrt(med / f1), math.sqrt(med / f2)], abs=1e-4)


def test_class_weighted_dsn_loss_is_torchs_weighted_mean_per_stage():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0, :2] = 255
    w = torch.tensor([0.5, 2.0, 1.0])
    out = CascadeTrainOutput(logits, [torch.ones(2, 4, 5, dtype=torch.bool)] * 2)
    expected = 0.0
    for l in logits:  # the weighted mean by hand: sum w_y * nll / sum w_y over labelled pixels
        nll = -F.log_softmax(l, 1).gather(1, target.clamp(max=2)[:, None])[:, 0]
        keep = target != 255
        wy = w[target.clamp(max=2)].double()
        expected += float((wy * nll)[keep].sum() / wy[keep].sum())
    assert float(sc.losses.dsn_loss(out, target, class_weights=w)) == pytest.approx(expected, rel=1e-6)
    unweighted = sc.losses.dsn_loss(out, target)
    assert float(sc.losses.dsn_loss(out, target, class_weights=[1.0, 1.0, 1.0])) == pytest.approx(float(unweighted))


def test_bad_class_weights_are_refused():
    out = CascadeTrainOutput([torch.zeros(1, 3, 2, 2)], [torch.ones(1, 2, 2, dtype=torch.bool)])
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="class_weights"):
        sc.losses.cascade_loss(out, target, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig(class_weights=[1.0, -1.0]).validate()


@pytest.mark.parametrize("field, value, words", [
    ("seed", -1, "seed: expected an int >= 0"), ("seed", 1.5, "seed: expected an int >= 0"),
    ("workers", -1, "workers: expected an int >= 0"), ("poly_power", -0.5, "poly_power: expected a number >= 0"),
    ("poly_power", float("nan"), "poly_power"), ("momentum", 1.0, "momentum: expected a number in [0, 1)"),
    ("weight_decay", -1e-4, "weight_decay: expected a number >= 0"),
])
def test_optimizer_and_loader_settings_are_checked(field, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**{field: value}).validate()
    TrainConfig(**{field: {"seed": 3, "workers": 0, "poly_power": 0.0, "momentum": 0.0, "weight_decay": 0.0}[field]}).validate()
