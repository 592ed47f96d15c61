"""The CPU engine: one active-set index per stage, cached tap tables, weights prepared once.

Each test checks what ran against an independent reference: the number of compactions
(``aten::nonzero``) and tap tables against the number of region convolutions, and the cached
inference weights against the unconverted module after every kind of parameter change.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import sparsecascade as sc
from sparsecascade.bench.forced_stops import force_stop_fractions
from sparsecascade.kernels import ConvGeometry
from sparsecascade.nn import freeze_batchnorm
from sparsecascade.ops import region_conv as region_conv_module


def count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


class CountNonzero(TorchFunctionMode):
    """Counts the compactions (``nonzero``) the library asks torch for."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "nonzero":
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_one_compaction_per_stage_not_per_layer(monkeypatch):
    """lc_resnet18 with stops imposed: its region convolutions share the stage's index and tap tables."""
    torch.manual_seed(0)
    model = force_stop_fractions(sc.create_model("lc_resnet18", 4, head_channels=16).eval(), [0.3, 0.3])
    x = torch.randn(1, 3, 96, 80)
    convs = count_calls(monkeypatch, region_conv_module, "region_conv2d_forward_torch")
    tables = count_calls(monkeypatch, ConvGeometry, "tap_table")
    with torch.no_grad(), CountNonzero() as compactions:
        model.set_backend("torch")(x)
    assert len(convs) == 14  # stages 2 and 3: 4 convs each; heads 2 and 3: 2 each (stage 1 and head 1: dense)
    # 3x3 geometries: stage 2 (dilation 2) and its head (1); stage 3 (dilations 2 and 4) and its head (1)
    assert len(tables) == 5
    # one active set per stage (the imposed stops of stages 1 and 2), and one per tap table for its padding
    assert compactions.calls == 2 + 5, f"{compactions.calls} compactions for {len(convs)} region convs"


def conv_bn_relu(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    block = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
    bn = block[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return freeze_batchnorm(block).eval()


def check_equal(converted, reference, x, mask):
    with torch.no_grad():
        want = torch.where(mask[:, None], reference(x), 0)
        with sc.active_region(mask, "torch"):
            got = converted(x)
        dense = converted(x)  # outside any region: the dense path, from the same cached weights
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, reference(x), rtol=1e-5, atol=1e-5)


def test_prepared_weights_follow_every_parameter_change():
    reference = conv_bn_relu(0)
    converted = sc.convert_to_region(copy.deepcopy(reference))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 7, 9, generator=gen)
    mask = torch.rand(2, 7, 9, generator=gen) < 0.5
    check_equal(converted, reference, x, mask)
    conv = converted[0]
    with torch.no_grad():  # in-place updates, as an optimizer makes them
        for module in (converted, reference):
            module[0].weight.mul_(-0.5)
            module[0].bias.add_(0.3)
    check_equal(converted, reference, x, mask)
    with torch.no_grad():  # the frozen BN's statistics
        reference[1].running_mean.add_(0.7)
        converted[1].running_mean.add_(0.7)
    check_equal(converted, reference, x, mask)
    other = conv_bn_relu(5)  # new weights loaded
    reference.load_state_dict(other.state_dict())
    converted.load_state_dict(other.state_dict())
    check_equal(converted, reference, x, mask)
    reference.double(), converted.double()  # new storage, new dtype
    check_equal(converted, reference, x.double(), mask)
    assert conv._prepared[1][0].dtype == torch.float64


def test_training_after_inference_is_exact():
    """Gradients flow to the raw parameters (not the cached copy); a step is seen by the next inference."""
    reference = conv_bn_relu(0)
    converted = sc.convert_to_region(copy.deepcopy(reference))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 7, 9, generator=gen)
    mask = torch.rand(2, 7, 9, generator=gen) < 0.6
    check_equal(converted, reference, x, mask)  # builds the cache
    with sc.active_region(mask, "torch"):
        loss = (converted(x) ** 2).sum()
    loss.backward()
    (torch.where(mask[:, None], reference(x), 0) ** 2).sum().backward()
    for a, b in zip(converted.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    for module in (converted, reference):
        torch.optim.SGD(module.parameters(), lr=0.1).step()
    check_equal(converted, reference, x, mask)
