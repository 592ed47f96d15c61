"""The work outside the region is skipped, and the MAC count is what the kernels were given.

Spies sit on the boundary between ``sparsecascade.ops`` and the kernels package (the functions of
``sparsecascade.kernels`` that take the active rows, wherever they are bound) and on every dense
convolution entry point (``F.conv2d``, ``torch.conv2d``, ``aten.convolution_backward``). At active
fractions of 0.25 and below, a region convolution must hand each kernel exactly the active rows and
never run a dense convolution, forward or backward; ``count_macs`` and ``CascadeOutput.macs`` must
equal the rows the kernels received times the MACs per row.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn as nn

import sparsecascade as sc
from sparsecascade.bench.forced_stops import force_stop_fractions
from sparsecascade.bench.timing import coherent_mask
from sparsecascade.kernels import triton_interpreting
from sparsecascade.ops import count_macs

TRITON_RUNS = triton_interpreting() or torch.cuda.is_available()
BACKENDS = ["torch", "auto"] + (["triton"] if TRITON_RUNS else [])

# (module, forward launcher, backward launcher) of each kernel family: pure functions on rows
KERNELS = {
    "torch": ("sparsecascade.kernels.region_conv.torch_twin", "region_conv2d_forward_torch",
              "sparsecascade.kernels.region_conv.torch_twin", "region_conv2d_backward_torch"),
    "triton": ("sparsecascade.kernels.region_conv.triton_forward", "region_conv2d_forward_triton",
               "sparsecascade.kernels.region_conv.triton_backward", "region_conv2d_backward_triton"),
}


class Spy:
    """Wraps a callable, records its calls, forwards everything else (``.default`` of an aten op)."""

    def __init__(self, fn, record):
        self._fn, self._record = fn, record

    def __call__(self, *args, **kwargs):
        self._record(args, kwargs)
        return self._fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def spy_everywhere(monkeypatch, module_name: str, name: str, record) -> None:
    """Replace ``module.name`` in every loaded module that holds it (``from x import f`` included)."""
    original = getattr(importlib.import_module(module_name), name)
    spy = Spy(original, record)
    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, spy)


class Recorder:
    """What reached the kernels and the dense convolution; ``phase`` tags each call."""

    def __init__(self, monkeypatch, families=("torch", "triton")):
        self.phase = 0
        self.forward, self.backward, self.dense = [], [], []
        for family in families:
            if family == "triton" and not TRITON_RUNS:
                continue
            fwd_mod, fwd, bwd_mod, bwd = KERNELS[family]
            # forward(x, weight (KH, KW, C_in, C_out), idx, out, geometry, ...)
            spy_everywhere(monkeypatch, fwd_mod, fwd, lambda a, k: self.forward.append(
                (self.phase, a[2].clone(), tuple(a[1].shape))))
            # backward(grad_rows (P, C_out), x, weight, idx, geometry, ...)
            spy_everywhere(monkeypatch, bwd_mod, bwd, lambda a, k: self.backward.append(
                (self.phase, a[3].clone(), a[0].shape[0])))
        dense = lambda a, k: self.dense.append(self.phase)  # noqa: E731
        monkeypatch.setattr(torch.nn.functional, "conv2d", Spy(torch.nn.functional.conv2d, dense))
        monkeypatch.setattr(torch, "conv2d", Spy(torch.conv2d, dense))
        monkeypatch.setattr(torch.ops.aten, "convolution_backward", Spy(torch.ops.aten.convolution_backward, dense))


def rows_macs(weight_khwc_shape, rows: int) -> int:
    kh, kw, c_in, c_out = weight_khwc_shape
    return rows * kh * kw * c_in * c_out


@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_hands_the_kernels_exactly_the_active_rows(monkeypatch, backend, fraction):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 11, generator=gen, requires_grad=True)
    w = (0.1 * torch.randn(24, 16, 3, 3, generator=gen)).requires_grad_()
    residual = torch.randn(2, 24, 12, 11, generator=gen, requires_grad=True)
    mask = coherent_mask(2, 12, 11, fraction, seed=1)
    active = mask.reshape(-1).nonzero().squeeze(1)
    rec = Recorder(monkeypatch)
    with count_macs() as count:
        out = sc.region_conv2d(x, w, None, mask, padding=1, backend=backend, residual=residual, relu=True)
    out.backward(torch.randn(out.shape, generator=gen))
    assert rec.dense == [], "a dense convolution ran"
    if fraction > 0:
        assert len(rec.forward) == 1 and len(rec.backward) == 1
    for _, idx, _ in rec.forward:
        assert torch.equal(idx, active)
    for _, idx, rows in rec.backward:
        assert torch.equal(idx, active) and rows == active.numel()
    assert count.macs == sum(rows_macs(shape, idx.numel()) for _, idx, shape in rec.forward)
    assert count.macs == active.numel() * 24 * 16 * 9


def test_dense_fallback_is_counted_as_dense_macs(monkeypatch):
    """"auto" on a CPU runs a 90% region as the dense convolution: every pixel's MACs were executed."""
    x = torch.randn(1, 8, 10, 10)
    w = torch.randn(4, 8, 3, 3)
    mask = coherent_mask(1, 10, 10, 0.9, seed=0)
    rec = Recorder(monkeypatch)
    with count_macs() as count:
        sc.region_conv2d(x, w, None, mask, padding=1, backend="auto")
    assert rec.forward == [] and len(rec.dense) == 1
    assert count.macs == 100 * 4 * 8 * 9


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=2, dilation=2))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def tiny_cascade(width=8):
    """Stage 1 at stride 4; stages 2 and 3 (stride 1) keep its resolution, so one mask per stage."""
    stages = [nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.ReLU()),
              nn.Sequential(Residual(width), nn.Conv2d(width, 12, 1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(12, width, (1, 3), padding=(0, 1)), Residual(width))]
    torch.manual_seed(0)
    return sc.LayerCascade(stages, num_classes=3, stage_channels=[width, 12, width], head_channels=8).eval()


def stage1_macs(n, h, w, width=8):
    """Stage 1 and head 1 on every pixel, counted by hand: conv 3x3 3->8, head 3x3 8->8, 1x1 8->3."""
    return n * h * w * (9 * 3 * width + 9 * width * 8 + 8 * 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cascade_gives_each_kernel_its_stage_region(monkeypatch, backend):
    model = force_stop_fractions(tiny_cascade().set_backend(backend), [0.75, 0.1])
    rec = Recorder(monkeypatch)
    for k, stage in enumerate(model.stages):
        stage.register_forward_pre_hook(lambda m, a, k=k: setattr(rec, "phase", k))
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        out = model(x)
    assert out.stop_fractions == pytest.approx([0.75, 0.1, 0.15])
    assert set(rec.dense) <= {0}, "stages 2 and 3 (25% and 15% active) ran a dense convolution"
    for k in (1, 2):
        active = (out.stage_map > k).reshape(-1).nonzero().squeeze(1)  # not decided by stages 1..k
        calls = [idx for phase, idx, _ in rec.forward if phase == k]
        assert calls and all(torch.equal(idx, active) for idx in calls), f"stage {k + 1}"
    executed = sum(rows_macs(shape, idx.numel()) for _, idx, shape in rec.forward)
    assert out.macs == stage1_macs(2, 10, 12) + executed
    assert out.dense_macs > out.macs


def test_cascade_counts_the_dense_fallback_as_executed(monkeypatch):
    """At 95% active on a CPU, "auto" runs stage 2 densely: its MACs are the dense ones, not 95% of them."""
    model = force_stop_fractions(tiny_cascade().set_backend("auto"), [0.05, 0.0])
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        out = model(x)
        dense = model.stage_dense_macs(x)
    assert out.stop_fractions == pytest.approx([0.05, 0.0, 0.95])
    assert out.macs == sum(dense)


def test_dense_macs_are_counted_without_running_user_code_on_fake_tensors():
    """A data-dependent check in a stage works, and the dense count needs no forward where every stage ran."""

    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if torch.isnan(x).any():  # data-dependent Python
                raise ValueError("NaN features")
            return torch.relu(self.conv(x))

    stages = [nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()), Checked(), Checked()]
    model = sc.LayerCascade(stages, num_classes=3, stage_channels=[8, 8, 8], head_channels=8, rho=0.0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)  # rho = 0: every pixel stops at stage 1, stages 2 and 3 never run
    per_stage = (3 * 8 * 9 + 8 * 8 * 9 + 8 * 3) * 64, (8 * 8 * 9 + 8 * 8 * 9 + 8 * 3) * 64
    assert out.stop_fractions == [1.0, 0.0, 0.0]
    assert model.stage_dense_macs(x) == [per_stage[0], per_stage[1], per_stage[1]]
    assert out.dense_macs == sum(model.stage_dense_macs(x)) and out.macs == per_stage[0]
