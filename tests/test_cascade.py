"""LayerCascade and convert_to_region on a custom backbone, against an independent masked reference.

The reference below re-implements DESIGN.md sections 1 and 2 for the test backbone with explicit
F.conv2d calls and torch.where masks: it shares no code with sparsecascade.nn.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecascade as sc
from sparsecascade.kernels import triton_interpreting

TRITON_RUNS = triton_interpreting() or torch.cuda.is_available()


def where(m, y, outside=None):
    return torch.where(m[:, None], y, torch.zeros((), dtype=y.dtype) if outside is None else outside)


def resample(m, size):
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.adaptive_max_pool2d(m[:, None].float(), size)[:, 0] > 0.5


class Residual(nn.Module):
    """relu(x + conv2(relu(bn(conv1(x))))): a residual block with an unfolded BatchNorm."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c).eval()
        self.conv2 = nn.Conv2d(c, c, 3, padding=2, dilation=2, bias=False)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))

    def reference(self, x, m):
        y = where(m, F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1))
        y = torch.relu(where(m, F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                                             self.bn.bias, False, 0.0, self.bn.eps)))
        return torch.relu(x + where(m, F.conv2d(y, self.conv2.weight, padding=2, dilation=2)))


class Branches(nn.Module):
    """Concatenation of a 1x1 branch, a 1x3/3x1 branch (Sequential: fused ReLU) and a pooling branch."""

    def __init__(self, c):
        super().__init__()
        self.b1 = nn.Conv2d(c, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(c, 5, 1), nn.ReLU(), nn.Conv2d(5, 5, (1, 3), padding=(0, 1)), nn.ReLU(),
                                nn.Conv2d(5, 6, (3, 1), padding=(1, 0)))
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.b3 = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        return torch.cat([torch.relu(self.b1(x)), self.b2(x), self.b3(self.pool(x))], 1)

    def reference(self, x, m):
        b1 = torch.relu(where(m, F.conv2d(x, self.b1.weight, self.b1.bias)))
        s = self.b2
        y = torch.relu(where(m, F.conv2d(x, s[0].weight, s[0].bias)))
        y = torch.relu(where(m, F.conv2d(y, s[2].weight, s[2].bias, padding=(0, 1))))
        b2 = where(m, F.conv2d(y, s[4].weight, s[4].bias, padding=(1, 0)))
        pooled = where(m, F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b2, where(m, F.conv2d(pooled, self.b3.weight, self.b3.bias))], 1)


class Downsample(nn.Module):
    """A stride-2 conv: computed densely and masked at its output resolution."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))

    def reference(self, x, m):
        y = F.conv2d(x, self.conv.weight, self.conv.bias, stride=2, padding=1)
        return torch.relu(where(resample(m, y.shape[-2:]), y))


class Stage(nn.Sequential):
    def reference(self, x, m):
        for layer in self:
            x = layer.reference(x, resample(m, x.shape[-2:]))
        return x


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))

    def reference(self, x, m):
        return self.forward(x)


def make_backbone(downsample_stage3=False):
    stages = [Stem(), Stage(Residual(8), Branches(8)), Stage(Residual(13), Branches(13))]
    channels = [8, 13, 13]  # Branches: 4 + 6 + 3 channels
    if downsample_stage3:
        stages[2] = Stage(Downsample(13, 12), Residual(12), Branches(12))
    return stages, channels


def head_reference(head, x, m):
    y = torch.relu(where(m, F.conv2d(x, head[0].weight, head[0].bias, padding=1)))
    return where(m, F.conv2d(y, head[2].weight, head[2].bias))


def reference_cascade(model, x, rho):
    """DESIGN.md section 1 written out (``rho`` a number, or a tuple with stage k's threshold at k):
    returns (logits at stage-1 resolution, stage map)."""
    feats, active = x, None
    final, stage_map = None, None
    for k, (stage, head) in enumerate(zip(model.stages, model.heads)):
        if active is not None and not active.any():
            break
        m = active
        if m is None:
            feats = stage(feats)
            m = torch.ones(x.shape[0], *feats.shape[-2:], dtype=torch.bool)
        else:
            feats = stage.reference(feats, m)
            m = resample(m, feats.shape[-2:])
        logits = head_reference(head, feats, m)
        conf = torch.softmax(logits, 1).amax(1)
        last = k == len(model.stages) - 1
        rho_k = rho[min(k, len(rho) - 1)] if isinstance(rho, tuple) else rho  # per stage, or one for all
        early_stop = m & (conf >= rho_k) if rho_k < 1 else torch.zeros_like(m)
        stop = m if last else early_stop
        if final is None:
            final = torch.zeros_like(logits)
            stage_map = torch.zeros(logits.shape[0], *logits.shape[-2:], dtype=torch.long)
        if tuple(logits.shape[-2:]) != tuple(final.shape[-2:]):
            stop = F.interpolate(stop[:, None].float(), size=final.shape[-2:], mode="nearest")[:, 0] > 0.5
            logits = F.interpolate(logits, size=final.shape[-2:], mode="bilinear", align_corners=False)
        decided = stop & (stage_map == 0)
        stage_map[decided] = k + 1
        final = torch.where(decided[:, None], logits, final)
        active = m & ~early_stop
    return final, stage_map


def assert_probabilities_then_labels(out, want_logits, x):
    """DESIGN.md section 1: the deciding stages' probabilities (softmax at stage 1's resolution) are
    upsampled to the input, then the argmax is taken; ties and near-ties aside, the labels are it."""
    want_probs = F.interpolate(torch.softmax(want_logits, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.probs, want_probs, rtol=1e-4, atol=1e-5)
    top2 = want_probs.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # where rounding cannot flip the argmax
    assert torch.equal(out.labels[clear], want_probs.argmax(1)[clear])


def make_model(seed=0, rho=0.7, downsample_stage3=False, head_gain=6.0):
    torch.manual_seed(seed)
    stages, channels = make_backbone(downsample_stage3)
    for s in stages:  # non-trivial BatchNorm statistics
        for mod in s.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.2, 0.2)
    model = sc.LayerCascade(stages, num_classes=4, stage_channels=channels, head_channels=8, rho=rho)
    for head in model.heads:  # scale the logits so that some pixels are confident and stop
        head[2].weight.data *= head_gain
    return model.eval()


def test_convert_to_region_keeps_dense_behaviour_and_names():
    torch.manual_seed(0)
    stages, _ = make_backbone()
    block = stages[1]
    x = torch.randn(2, 8, 9, 11)
    names = [n for n, _ in block.state_dict().items()]
    with torch.no_grad():
        before = block(x)
        sc.convert_to_region(block)
        after = block(x)
    torch.testing.assert_close(after, before)
    assert [n for n, _ in block.state_dict().items()] == names
    assert isinstance(block[0].conv1, sc.RegionConv2d)
    assert isinstance(block[1].b2[0], sc.RegionConv2d) and block[1].b2[0].fused_relu


@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("backend", ["dense", "torch", "auto"] + (["triton"] if TRITON_RUNS else []))
def test_stage_matches_masked_reference(backend, downsample):
    torch.manual_seed(1)
    stages, _ = make_backbone(downsample)
    stage = stages[2]
    x = torch.relu(torch.randn(2, 13, 9, 13))
    m = torch.rand(2, 9, 13) < 0.4
    want = stage.reference(x, m)
    sc.convert_to_region(stage)
    with torch.no_grad(), sc.active_region(m, backend):
        got = stage(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rho_one_equals_dense_stages_and_last_head():
    model = make_model(rho=1.0)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        out = model(x)
        f = x
        for stage in model.stages:  # called directly: plain dense modules
            f = stage(f)
        want = F.interpolate(model.heads[-1](f), size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
    assert out.stop_fractions == [0.0, 0.0, 1.0]
    assert (out.stage_map == 3).all()
    # no pixel can stop early, so the heads of stages 1 and 2 are not run: the plain network's MACs
    with torch.no_grad(), sc.ops.count_macs() as plain:
        with sc.active_region(None, "torch"):
            f = x
            for stage in model.stages:
                f = stage(f)
            model.heads[-1](f)
    assert out.macs == plain.macs < out.dense_macs


@pytest.mark.parametrize("downsample", [False, True])
@settings(max_examples=6)
@given(seed=st.integers(0, 1000), rho=st.sampled_from([0.5, 0.7, 0.9]))
def test_backends_equal_reference(seed, rho, downsample):
    model = make_model(seed=seed, rho=rho, downsample_stage3=downsample)
    x = torch.randn(2, 3, 29, 38, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want_logits, want_map = reference_cascade(model, x, rho)
        outs = {}
        for backend in ["dense", "torch", "auto"]:
            outs[backend] = model.set_backend(backend)(x)
    for backend, out in outs.items():
        assert torch.equal(out.stage_map, want_map), backend
        want = F.interpolate(want_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5, msg=backend)
        assert_probabilities_then_labels(out, want_logits, x)
        assert sum(out.stop_fractions) == pytest.approx(1.0)
    # "auto" on a CPU runs a nearly full region as the dense convolution: more MACs executed
    assert outs["torch"].macs <= outs["auto"].macs <= outs["dense"].macs


@settings(max_examples=6)
@given(seed=st.integers(0, 1000), rho=st.tuples(st.sampled_from([0.5, 0.8, 0.95]), st.sampled_from([0.4, 0.7, 1.0])))
def test_per_stage_rho_equals_reference(seed, rho):
    """A threshold per stage: stage k stops its pixels at rho[k] (the reference applies them one by one)."""
    model = make_model(seed=seed, rho=rho, head_gain=15.0)  # confident heads: pixels stop at every stage
    assert model.rho == rho and [model.stage_rho(k) for k in range(2)] == list(rho)
    x = torch.randn(2, 3, 29, 38, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want_logits, want_map = reference_cascade(model, x, rho)
        for backend in ["dense", "torch"]:
            out = model.set_backend(backend)(x)
            assert torch.equal(out.stage_map, want_map), backend
            want = F.interpolate(want_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5, msg=backend)
            assert_probabilities_then_labels(out, want_logits, x)


def test_a_stage_at_rho_one_skips_its_head_only():
    """rho (1, r): stage 1 can stop nothing, so head 1 is not run (its MACs are not spent); stage 2 stops
    at r as the reference says. A stop rule that decides the same runs every head: the MACs differ by
    head 1 on every pixel, exactly. Neither one rho for both stages gives that stage map."""
    model = make_model(seed=1, rho=(1.0, 0.4), head_gain=15.0).set_backend("torch")
    x = torch.randn(2, 3, 29, 38, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        _, want_map = reference_cascade(model, x, (1.0, 0.4))
        assert torch.equal(out.stage_map, want_map) and out.stop_fractions[0] == 0.0 and out.stop_fractions[1] > 0.5
        for one in (1.0, 0.4):
            model.rho = one
            assert not torch.equal(model(x).stage_map, out.stage_map), one
        model.rho = (1.0, 0.4)
        model.stop_rule = lambda logits, active, k: (torch.zeros_like(active) if k == 0
                                                     else torch.softmax(logits, 1).amax(1) >= 0.4)
        every_head = model(x)
        model.stop_rule = None
        assert torch.equal(every_head.stage_map, out.stage_map)
        with sc.active_region(None, "torch"), sc.ops.count_macs() as head1:
            model.heads[0](model.stages[0](x))
        with sc.active_region(None, "torch"), sc.ops.count_macs() as stage1:
            model.stages[0](x)
    assert every_head.macs - out.macs == head1.macs - stage1.macs > 0


def test_rho_values_are_checked():
    model = make_model(rho=0.7)
    model.rho = [0.9, 0.5]  # a list (JSON's) is kept as a tuple
    assert model.rho == (0.9, 0.5) and model.stage_rho(1) == 0.5
    model.rho = 0.8
    assert model.rho == 0.8 and model.stage_rho(0) == model.stage_rho(1) == 0.8
    for bad, fragment in [((0.9,), "expected one number in [0, 1] or 2 (one per stage but the last of 3), got 1"),
                          ((0.9, 0.5, 0.5), "or 2 (one per stage but the last of 3), got 3"),
                          ((0.9, 1.5), "got (0.9, 1.5)"), (float("nan"), "got nan"), (True, "got True"),
                          ("0.9", "got '0.9'"), ((), "got ()")]:
        with pytest.raises(ValueError) as e:
            model.rho = bad
        assert str(e.value).startswith("rho: ") and fragment in str(e.value) and "\n" not in str(e.value), bad
    assert model.rho == 0.8
    with pytest.raises(ValueError, match=r"k: expected a stage that can stop pixels, in \[0, 1\], got 2"):
        model.stage_rho(2)


@pytest.mark.skipif(not TRITON_RUNS, reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_triton_backend_equals_dense():
    model = make_model(seed=3, rho=0.7)
    x = torch.randn(1, 3, 21, 26, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = model.set_backend("dense")(x)
        tri = model.set_backend("triton")(x)
    assert torch.equal(tri.stage_map, dense.stage_map)
    torch.testing.assert_close(tri.logits, dense.logits, rtol=1e-4, atol=1e-4)


def test_batch_equals_one_image_at_a_time():
    model = make_model(seed=4, rho=0.7).set_backend("torch")
    x = torch.randn(3, 3, 31, 27, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch = model(x)
        single = [model(x[i : i + 1]) for i in range(3)]
    for i, s in enumerate(single):
        torch.testing.assert_close(batch.logits[i : i + 1], s.logits, rtol=1e-4, atol=1e-5)
        assert torch.equal(batch.stage_map[i : i + 1], s.stage_map)
    assert len({tuple(s.stop_fractions) for s in single}) > 1, "the images should stop differently"
    assert batch.macs == sum(s.macs for s in single)


def test_odd_size_97x131():
    model = make_model(seed=5, rho=0.8).set_backend("torch")
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        out = model(x)
        dense = model.set_backend("dense")(x)
    assert out.logits.shape == (1, 4, 97, 131) and out.labels.shape == (1, 97, 131)
    assert out.stage_map.shape == (1, 25, 33)
    torch.testing.assert_close(out.logits, dense.logits, rtol=1e-4, atol=1e-5)


def test_empty_active_set_skips_later_stages():
    model = make_model(rho=0.0)  # every pixel is confident enough at stage 1
    x = torch.randn(2, 3, 24, 24)
    model.dense_macs(x)  # counted once per shape (the stages on an empty active set): before the hooks below
    calls = []
    for stage in model.stages[1:]:
        stage.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(x)
    assert calls == [] and out.stop_fractions == [1.0, 0.0, 0.0]
    stage1_macs = 3 * 8 * 9 * 36 + (8 * 8 * 9 + 8 * 4) * 36  # stem conv + head 1, on 6x6 maps
    assert out.macs == stage1_macs * 2


def test_macs_hand_count():
    """A two-stage 1x1 network: every MAC counted by hand."""
    stages = [nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)]
    heads = [nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)]
    model = sc.LayerCascade(stages, heads, rho=0.9).eval()
    with torch.no_grad():
        heads[0].weight.zero_()
        heads[0].bias.copy_(torch.tensor([0.0, 0.0]))  # confidence 0.5 everywhere ...
        heads[0].weight[0, 0] = 100.0  # ... except where channel 0 is far from 0
        x = torch.zeros(1, 3, 4, 5)
        stages[0].weight.zero_()
        stages[0].bias.zero_()
        stages[0].weight[0, 0] = 1.0
        x[0, 0, :2] = 1.0  # 10 pixels of the 20 are confident
        out = model(x)
    per_pixel = 3 * 4 + 4 * 2
    assert out.macs == 20 * per_pixel + 10 * (4 * 4 + 4 * 2)
    assert out.dense_macs == 20 * (3 * 4 + 4 * 2 + 4 * 4 + 4 * 2)
    assert out.stop_fractions == [0.5, 0.5]


def test_training_output_regions_and_gradients():
    model = make_model(seed=4, rho=0.7).train().set_backend("torch")
    x = torch.randn(3, 3, 31, 27, generator=torch.Generator().manual_seed(4))
    out = model(x)
    assert isinstance(out, sc.CascadeTrainOutput)
    assert out.regions[0].all() and not out.regions[1].all()
    assert all(not r.requires_grad for r in out.regions)
    loss = out.stage_logits[1].sum()
    loss.backward()
    head2 = model.heads[1][0].weight.grad
    assert head2 is not None and head2.abs().sum() > 0
    # the stage-2 logits are zero outside its region, so no gradient reaches them from there
    assert (out.stage_logits[1].detach()[~out.regions[1][:, None].expand_as(out.stage_logits[1])] == 0).all()


def test_errors():
    stages, channels = make_backbone()
    with pytest.raises(ValueError, match="heads"):
        sc.LayerCascade(stages, None)
    with pytest.raises(ValueError, match="one head per stage"):
        sc.LayerCascade(stages, [nn.Identity()])
    model = make_model()
    with pytest.raises(ValueError, match="rho"):
        model.rho = 1.5
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cuda")
    with pytest.raises(ValueError, match="x: expected"):
        model(torch.randn(3, 8, 8))


# -- what the wrapper refuses, and the explicit opt-in ----------------------------------------------

class WSConv2d(nn.Conv2d):
    """Weight standardisation: an nn.Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def stages_with(layer):
    """Three stages; ``layer`` sits in stage 2 at ``stages.1.1``, between two convolutions."""
    return [nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), layer, nn.Conv2d(8, 8, 3, padding=1)),
            nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())]


REFUSED = [
    (lambda: WSConv2d(8, 8, 3, padding=1), ["WSConv2d", "nn.Conv2d subclass", "register_region_converter"]),
    (lambda: nn.BatchNorm2d(8, track_running_stats=False), ["BatchNorm2d", "track_running_stats=False"]),
    (lambda: nn.GroupNorm(2, 8), ["GroupNorm", "over space"]),
    (lambda: nn.InstanceNorm2d(8, affine=True), ["InstanceNorm2d", "over space"]),
    (lambda: nn.LayerNorm([8, 8, 8]), ["LayerNorm", "over space"]),
    (lambda: nn.LocalResponseNorm(3), ["LocalResponseNorm", "over space"]),
    (lambda: nn.Sigmoid(), ["Sigmoid", "zero to zero"]),
    (lambda: nn.Upsample(scale_factor=1), ["Upsample", "zero to zero"]),
    (lambda: nn.Hardtanh(0.1, 1.0), ["Hardtanh(min_val=0.1, max_val=1.0) maps zero to 0.1"]),
    (lambda: nn.Hardtanh(-2.0, -1.0), ["Hardtanh(min_val=-2.0, max_val=-1.0) maps zero to -1.0"]),
]


@pytest.mark.parametrize("make, words", REFUSED, ids=[w[0] for _, w in REFUSED])
def test_refuses_what_it_cannot_run_exactly(make, words):
    stages = stages_with(make())
    before = [copy.deepcopy(s.state_dict()) for s in stages]
    with pytest.raises(ValueError) as info:
        sc.LayerCascade(stages, num_classes=3, stage_channels=[8, 8, 8], head_channels=8)
    message = str(info.value)
    assert message.startswith("stages.1.1: ") and "\n" not in message, message
    for word in words + ["dense_modules=", "'stages.1.1'"]:
        assert word in message, (word, message)
    # refused before anything changed: no conversion, no frozen BatchNorm
    assert not any(isinstance(m, sc.RegionConv2d) for s in stages for m in s.modules())
    assert type(stages[1][1]) is type(make())
    assert all(s.state_dict().keys() == b.keys() for s, b in zip(stages, before))


@pytest.mark.parametrize("layer", [nn.ReLU(inplace=True), nn.ReLU6(), nn.LeakyReLU(0.1), nn.GELU(), nn.SiLU(),
                                   nn.Tanh(), nn.Hardswish(), nn.Dropout2d(0.1), nn.Identity(), nn.PReLU(8),
                                   nn.Hardtanh(0.0, 2.0)],
                         ids=lambda m: type(m).__name__)
def test_zero_preserving_layers_are_accepted_and_exact(layer):
    """Layers that map zero to zero pixel by pixel run as they are; the result is the masked reference."""
    torch.manual_seed(0)
    stage = stages_with(layer)[1].eval()
    x = torch.randn(2, 8, 9, 11)
    m = torch.rand(2, 9, 11) < 0.4
    with torch.no_grad():
        y = where(m, F.conv2d(x, stage[0].weight, stage[0].bias, padding=1))
        want = where(m, F.conv2d(layer(y), stage[2].weight, stage[2].bias, padding=1))
        sc.convert_to_region(stage)
        with sc.active_region(m, "torch"):
            got = stage(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_region_conv2d_built_like_a_conv2d():
    """``RegionConv2d(in, out, k, ...)`` is an nn.Conv2d (same parameters, same result outside a region)
    that computes the masked convolution, with its fused ReLU, inside one."""
    torch.manual_seed(0)
    conv = sc.RegionConv2d(4, 5, 3, padding=2, dilation=2, relu=True)
    plain = nn.Conv2d(4, 5, 3, padding=2, dilation=2)
    plain.load_state_dict(conv.state_dict())
    assert "RegionConv2d(4, 5, kernel_size=(3, 3)" in repr(conv) and "relu" in repr(conv)
    x = torch.randn(2, 4, 9, 11)
    m = torch.rand(2, 9, 11) < 0.4
    with torch.no_grad():
        torch.testing.assert_close(conv(x), torch.relu(plain(x)), rtol=1e-5, atol=1e-6)
        for backend in ("torch", "auto", "dense"):
            with sc.active_region(m, backend):
                torch.testing.assert_close(conv(x), where(m, torch.relu(plain(x))), rtol=1e-5, atol=1e-6)


def test_dense_modules_runs_a_refused_layer_densely_and_masks_it():
    torch.manual_seed(0)
    stage = stages_with(WSConv2d(8, 8, 3, padding=1))[1]
    x = torch.randn(2, 8, 9, 11)
    m = torch.rand(2, 9, 11) < 0.3
    with torch.no_grad():
        y = where(m, F.conv2d(x, stage[0].weight, stage[0].bias, padding=1))
        y = where(m, stage[1](y))  # the WS conv's own forward, every pixel, then masked
        want = where(m, F.conv2d(y, stage[2].weight, stage[2].bias, padding=1))
        sc.convert_to_region(stage, dense_modules=[WSConv2d])
        with sc.active_region(m, "torch") as region:
            got = stage(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    per_pixel, pixels, active = 8 * 8 * 9, 2 * 9 * 11, int(m.sum())
    assert region.macs == 2 * active * per_pixel + pixels * per_pixel  # the WS conv: every pixel
    assert region.dense_macs == 3 * pixels * per_pixel


@pytest.mark.parametrize("dense", [[nn.GroupNorm], ["stages.1.1"]], ids=["type", "name"])
def test_dense_modules_in_the_cascade(dense):
    torch.manual_seed(0)
    model = sc.LayerCascade(stages_with(nn.GroupNorm(2, 8)), num_classes=3, stage_channels=[8, 8, 8],
                            head_channels=8, rho=0.5, dense_modules=dense).eval()
    assert isinstance(model.stages[1][1], nn.GroupNorm)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.labels.shape == (1, 32, 32)


def test_dense_modules_keeps_a_batchnorm_without_statistics_as_it_is():
    model = sc.LayerCascade(stages_with(nn.BatchNorm2d(8, track_running_stats=False)), num_classes=3,
                            stage_channels=[8, 8, 8], head_channels=8, dense_modules=[nn.BatchNorm2d])
    assert type(model.stages[1][1]) is nn.BatchNorm2d  # not frozen to the identity


def test_dense_modules_errors():
    with pytest.raises(ValueError, match=r"dense_modules: \['stages.7'\] name no submodule"):
        sc.LayerCascade(stages_with(nn.GroupNorm(2, 8)), num_classes=3, stage_channels=[8, 8, 8],
                        dense_modules=["stages.7"])
    with pytest.raises(TypeError, match="dense_modules: expected nn.Module types or dotted module names"):
        sc.convert_to_region(nn.Sequential(nn.Conv2d(3, 3, 1)), dense_modules=[3])


def test_register_region_converter_accepts_a_layer_of_your_own():
    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    with pytest.raises(ValueError, match="stages.1.1: Swish has no region rule"):
        sc.LayerCascade(stages_with(Swish()), num_classes=3, stage_channels=[8, 8, 8])
    sc.nn.register_region_converter(Swish)(lambda m: m)  # it maps zero to zero, pixel by pixel
    try:
        sc.LayerCascade(stages_with(Swish()), num_classes=3, stage_channels=[8, 8, 8])
    finally:
        del sc.nn.convert._CONVERTERS[Swish]


# -- user code inside a stage -----------------------------------------------------------------------

def inplace_stages(inplace):
    return [nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()),
            nn.Sequential(nn.ReLU(inplace=inplace), nn.Conv2d(8, 8, 3, padding=1)),
            nn.Sequential(nn.ReLU(inplace=inplace), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=inplace))]


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_inplace_relu_at_the_start_of_a_stage(backend):
    """Stage k's input is also head k-1's: an in-place ReLU there must not break (or change) anything."""
    models = {}
    for inplace in (True, False):
        torch.manual_seed(0)
        models[inplace] = sc.LayerCascade(inplace_stages(inplace), num_classes=3, stage_channels=[8, 8, 8],
                                          head_channels=8, rho=0.6).set_backend(backend)
    x = torch.randn(2, 3, 40, 36)
    grads = {}
    for inplace, model in models.items():
        out = model.train()(x)
        sum((l * torch.arange(l.numel()).view(l.shape).sin()).sum() for l in out.stage_logits).backward()
        grads[inplace] = [p.grad for p in model.parameters()]
    for got, want in zip(grads[True], grads[False]):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        evals = {inplace: model.eval()(x) for inplace, model in models.items()}
    torch.testing.assert_close(evals[True].logits, evals[False].logits)


def test_a_stage_that_returns_a_tuple():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.conv(x), x

    stages = [nn.Conv2d(3, 8, 3, stride=4, padding=1), Pair(), nn.Conv2d(8, 8, 1)]
    model = sc.LayerCascade(stages, num_classes=3, stage_channels=[8, 8, 8], head_channels=8).eval()
    with pytest.raises(TypeError, match=r"^stages: stages\[1\] must return one feature map \(N, C, h, w\) tensor, got tuple$"):
        model(torch.randn(1, 3, 32, 32))


def test_stage_channels_that_disagree_with_a_stage():
    stages = [nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)]
    model = sc.LayerCascade(stages, num_classes=3, stage_channels=[8, 8, 8], head_channels=8).eval()
    with pytest.raises(ValueError, match=r"^stage_channels: stage_channels\[1\] = 8, but stages\[1\] returns 16 channels$"):
        model(torch.randn(1, 3, 32, 32))
