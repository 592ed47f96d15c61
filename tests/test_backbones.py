"""Backbones: output stride 8 and stage sizes, frozen BN, ImageNet checkpoint naming and loading.

Kept light for a 2-core CPU: real-size models are only built on the meta device (shapes and
parameter counts without allocation); forward passes use resnet18 and reduced-depth builders.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sparsecascade.models import (
    BasicBlock,
    Block8,
    Block17,
    Block35,
    Bottleneck,
    FrozenBatchNorm2d,
    StagedBackbone,
    backbone_state_dict_from_imagenet,
    backbone_state_dict_to_imagenet,
    create_backbone,
    freeze_batchnorm,
    imagenet_key_map,
    list_backbones,
)
from sparsecascade import load_backbone_weights

ALL = ["irnet", "resnet101", "resnet18", "resnet50", "vgg16"]
CHANNELS = {
    "resnet18": [128, 256, 512],
    "resnet50": [512, 1024, 2048],
    "resnet101": [512, 1024, 2048],
    "vgg16": [256, 512, 1024],
    "irnet": [1088, 2080, 1536],
}
SMALL = {"resnet18": {}, "resnet50": {"layers": (1, 1, 1, 1)}, "resnet101": {"layers": (1, 1, 2, 1)},
         "vgg16": {}, "irnet": {"blocks": (1, 1, 1)}}
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def meta_backbone(name, **kw) -> StagedBackbone:
    with torch.device("meta"):
        return create_backbone(name, **kw)


def randomize_frozen_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.copy_(0.5 + torch.rand(c, generator=g, dtype=m.weight.dtype))
            m.bias.copy_(0.1 * torch.randn(c, generator=g, dtype=m.bias.dtype))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=m.running_var.dtype))


# ----------------------------------------------------------------------------------------------
# Reference checkpoint layouts, written from the published torchvision / timm definitions
# (independent of sparsecascade's module tree): {key: shape}.

def _bn(sd, p, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{p}.{s}"] = (c,)
    sd[f"{p}.num_batches_tracked"] = ()


def ref_torchvision_resnet(kind: str, layers) -> dict:
    sd = {"conv1.weight": (64, 3, 7, 7)}
    _bn(sd, "bn1", 64)
    inplanes = 64
    for li, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2)), 1):
        out = planes if kind == "basic" else 4 * planes
        for b in range(n):
            p = f"layer{li}.{b}"
            if kind == "basic":
                sd[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3); _bn(sd, f"{p}.bn1", planes)
                sd[f"{p}.conv2.weight"] = (planes, planes, 3, 3); _bn(sd, f"{p}.bn2", planes)
            else:
                sd[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1); _bn(sd, f"{p}.bn1", planes)
                sd[f"{p}.conv2.weight"] = (planes, planes, 3, 3); _bn(sd, f"{p}.bn2", planes)
                sd[f"{p}.conv3.weight"] = (out, planes, 1, 1); _bn(sd, f"{p}.bn3", out)
            if b == 0 and (stride != 1 or inplanes != out):
                sd[f"{p}.downsample.0.weight"] = (out, inplanes, 1, 1)
                _bn(sd, f"{p}.downsample.1", out)
            inplanes = out
    sd["fc.weight"] = (1000, inplanes)
    sd["fc.bias"] = (1000,)
    return sd


def ref_torchvision_vgg16() -> dict:
    sd, cin, i = {}, 3, 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            i += 1
        else:
            sd[f"features.{i}.weight"] = (v, cin, 3, 3)
            sd[f"features.{i}.bias"] = (v,)
            cin, i = v, i + 2
    for j, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        sd[f"classifier.{j}.weight"] = (o, n)
        sd[f"classifier.{j}.bias"] = (o,)
    return sd


def ref_timm_inception_resnet_v2(n35=10, n17=20, n8=9) -> dict:
    sd = {}

    def bc(p, cin, cout, kh, kw=None):
        sd[f"{p}.conv.weight"] = (cout, cin, kh, kh if kw is None else kw)
        _bn(sd, f"{p}.bn", cout)

    bc("conv2d_1a", 3, 32, 3); bc("conv2d_2a", 32, 32, 3); bc("conv2d_2b", 32, 64, 3)
    bc("conv2d_3b", 64, 80, 1); bc("conv2d_4a", 80, 192, 3)
    p = "mixed_5b"
    bc(f"{p}.branch0", 192, 96, 1)
    bc(f"{p}.branch1.0", 192, 48, 1); bc(f"{p}.branch1.1", 48, 64, 5)
    bc(f"{p}.branch2.0", 192, 64, 1); bc(f"{p}.branch2.1", 64, 96, 3); bc(f"{p}.branch2.2", 96, 96, 3)
    bc(f"{p}.branch3.1", 192, 64, 1)
    for i in range(n35):
        p = f"repeat.{i}"
        bc(f"{p}.branch0", 320, 32, 1)
        bc(f"{p}.branch1.0", 320, 32, 1); bc(f"{p}.branch1.1", 32, 32, 3)
        bc(f"{p}.branch2.0", 320, 32, 1); bc(f"{p}.branch2.1", 32, 48, 3); bc(f"{p}.branch2.2", 48, 64, 3)
        sd[f"{p}.conv2d.weight"] = (320, 128, 1, 1); sd[f"{p}.conv2d.bias"] = (320,)
    p = "mixed_6a"
    bc(f"{p}.branch0", 320, 384, 3)
    bc(f"{p}.branch1.0", 320, 256, 1); bc(f"{p}.branch1.1", 256, 256, 3); bc(f"{p}.branch1.2", 256, 384, 3)
    for i in range(n17):
        p = f"repeat_1.{i}"
        bc(f"{p}.branch0", 1088, 192, 1)
        bc(f"{p}.branch1.0", 1088, 128, 1); bc(f"{p}.branch1.1", 128, 160, 1, 7)
        bc(f"{p}.branch1.2", 160, 192, 7, 1)
        sd[f"{p}.conv2d.weight"] = (1088, 384, 1, 1); sd[f"{p}.conv2d.bias"] = (1088,)
    p = "mixed_7a"
    bc(f"{p}.branch0.0", 1088, 256, 1); bc(f"{p}.branch0.1", 256, 384, 3)
    bc(f"{p}.branch1.0", 1088, 256, 1); bc(f"{p}.branch1.1", 256, 288, 3)
    bc(f"{p}.branch2.0", 1088, 256, 1); bc(f"{p}.branch2.1", 256, 288, 3); bc(f"{p}.branch2.2", 288, 320, 3)
    for p in [f"repeat_2.{i}" for i in range(n8)] + ["block8"]:
        bc(f"{p}.branch0", 2080, 192, 1)
        bc(f"{p}.branch1.0", 2080, 192, 1); bc(f"{p}.branch1.1", 192, 224, 1, 3)
        bc(f"{p}.branch1.2", 224, 256, 3, 1)
        sd[f"{p}.conv2d.weight"] = (2080, 448, 1, 1); sd[f"{p}.conv2d.bias"] = (2080,)
    bc("conv2d_7b", 2080, 1536, 1)
    sd["classif.weight"] = (1000, 1536); sd["classif.bias"] = (1000,)
    return sd


def reference_layout(name: str, **kw) -> dict:
    if name == "resnet18":
        return ref_torchvision_resnet("basic", kw.get("layers", (2, 2, 2, 2)))
    if name == "resnet50":
        return ref_torchvision_resnet("bottleneck", kw.get("layers", (3, 4, 6, 3)))
    if name == "resnet101":
        return ref_torchvision_resnet("bottleneck", kw.get("layers", (3, 4, 23, 3)))
    if name == "vgg16":
        return ref_torchvision_vgg16()
    if name == "irnet":
        return ref_timm_inception_resnet_v2(*kw.get("blocks", (10, 20, 9)))
    raise KeyError(name)


_IRNET_STAGE = {**{k: 0 for k in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a",
                                  "mixed_5b", "repeat", "mixed_6a")},
                "repeat_1": 1, "mixed_7a": 1, "repeat_2": 2, "block8": 2, "conv2d_7b": 2}


def expected_stage(name: str, key: str) -> int:
    """The stage split of the brief, from the checkpoint key."""
    top = key.split(".")[0]
    if name.startswith("resnet"):
        return {"layer3": 1, "layer4": 2}.get(top, 0)
    if name == "vgg16":
        i = int(key.split(".")[1])
        return 0 if i <= 16 else 1 if i <= 23 else 2
    return _IRNET_STAGE[top]


def is_classifier(key: str) -> bool:
    return key.startswith(("fc.", "classifier.", "classif."))


def make_reference_state_dict(name: str, seed: int = 0, **kw) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in reference_layout(name, **kw).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1234, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            sd[k] = 0.05 * torch.randn(shape, generator=g)
    return sd


# ----------------------------------------------------------------------------------------------
# registry, structure


def test_registry_lists_and_filters():
    assert list_backbones() == ALL
    assert list_backbones("resnet*") == ["resnet101", "resnet18", "resnet50"]
    assert list_backbones(["vgg*", "ir*"]) == ["irnet", "vgg16"]
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet34")


@pytest.mark.parametrize("name", ALL)
def test_meta_stage_sizes_and_channels(name):
    """Real-size models on the meta device: 3 stages, output stride 8, equal sizes (ceil)."""
    m = meta_backbone(name)
    assert isinstance(m, StagedBackbone) and len(m.stages) == 3
    assert m.out_channels == CHANNELS[name] and m.output_stride == 8
    assert len(m.mean) == 3 and len(m.std) == 3
    for h, w in [(512, 512), (97, 131), (64, 64), (33, 1)]:
        feats = m(torch.empty(2, 3, h, w, device="meta"))
        assert len(feats) == 3
        exp = (math.ceil(h / 8), math.ceil(w / 8))
        assert m.output_size(h, w) == exp
        for f, c in zip(feats, CHANNELS[name]):
            assert tuple(f.shape) == (2, c, *exp), (name, h, w, f.shape)


@pytest.mark.parametrize("name,total,classifier", [
    ("resnet18", 11_689_512, 513_000),
    ("resnet50", 25_557_032, 2_049_000),
    ("resnet101", 44_549_160, 2_049_000),
    ("vgg16", 14_714_688, 0),  # torchvision vgg16 .features
    ("irnet", 55_843_464, 1_537_000),  # timm inception_resnet_v2 incl. classif
])
def test_parameter_counts_match_imagenet_models(name, total, classifier):
    m = meta_backbone(name)
    # Frozen BN keeps weight/bias as buffers: count every checkpoint tensor except BN statistics.
    counted = {k: v.numel() for k, v in m.state_dict().items() if not k.endswith(BN_STATS)}
    n_new = sum(n for k, n in counted.items() if k.split(".", 2)[2].startswith(m.new_layers))
    assert sum(counted.values()) - n_new == total - classifier
    if name == "vgg16":  # LargeFOV's fc6 (3x3, dilation 12) and fc7 (1x1) are new layers
        assert n_new == (1024 * 512 * 9 + 1024) + (1024 * 1024 + 1024)
    bn_affine = sum(2 * x.num_features for x in m.modules() if isinstance(x, FrozenBatchNorm2d))
    assert sum(p.numel() for p in m.parameters()) == sum(counted.values()) - bn_affine
    # the published reference layouts give the same totals (sanity of the references themselves)
    ref = reference_layout(name)
    n_ref = sum(math.prod(s) for k, s in ref.items() if not k.endswith(BN_STATS))
    if name == "vgg16":
        n_ref -= sum(math.prod(s) for k, s in ref.items() if k.startswith("classifier."))
        assert n_ref == total
    else:
        assert n_ref == total


def test_block_counts_and_typed_blocks():
    m = meta_backbone("irnet")
    s1, s2, s3 = m.stages
    assert [n for n, _ in s1.named_children()] == ["conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a",
                                                  "conv2d_3b", "conv2d_4a", "maxpool_5a", "mixed_5b",
                                                  "repeat", "mixed_6a"]
    assert [n for n, _ in s2.named_children()] == ["repeat_1", "mixed_7a"]
    assert [n for n, _ in s3.named_children()] == ["repeat_2", "block8", "conv2d_7b"]
    assert len(s1.repeat) == 10 and all(isinstance(b, Block35) and b.scale == 0.17 and b.has_relu
                                        for b in s1.repeat)
    assert len(s2.repeat_1) == 20 and all(isinstance(b, Block17) and b.scale == 0.10 for b in s2.repeat_1)
    assert len(s3.repeat_2) == 9 and all(isinstance(b, Block8) and b.scale == 0.20 for b in s3.repeat_2)
    assert isinstance(s3.block8, Block8) and s3.block8.relu is None and s3.block8.scale == 1.0
    for b in (s1.repeat[0], s2.repeat_1[0], s3.block8):
        assert b.conv2d.kernel_size == (1, 1) and b.conv2d.bias is not None
        assert sum(x.conv.out_channels if hasattr(x, "conv") else x[-1].conv.out_channels
                   for x in b.branches()) == b.conv2d.in_channels
    assert s2.repeat_1[0].branch1[1].conv.dilation == (1, 2)
    assert s2.repeat_1[0].branch1[2].conv.dilation == (2, 1)
    assert s3.repeat_2[0].branch1[1].conv.dilation == (1, 4)
    assert s2.mixed_7a.branch2[2].conv.dilation == (2, 2) and s2.mixed_7a.branch2[2].conv.stride == (1, 1)
    r = meta_backbone("resnet50")
    assert all(isinstance(b, Bottleneck) for b in r.stages[1].layer3)
    assert r.stages[1].layer3[0].conv2.dilation == (1, 1) and r.stages[1].layer3[1].conv2.dilation == (2, 2)
    assert r.stages[2].layer4[0].conv2.dilation == (2, 2) and r.stages[2].layer4[1].conv2.dilation == (4, 4)
    assert all(isinstance(b, BasicBlock) for b in meta_backbone("resnet18").stages[2].layer4)


# ----------------------------------------------------------------------------------------------
# real forward passes (small)


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "irnet"])
def test_forward_small_inputs(name):
    torch.manual_seed(0)
    m = create_backbone(name, **SMALL[name])
    for h, w in [(64, 64), (97, 131)] if name != "vgg16" else [(64, 64)]:
        with torch.no_grad():
            feats = m(torch.randn(1, 3, h, w))
        assert [tuple(f.shape) for f in feats] == [(1, c, math.ceil(h / 8), math.ceil(w / 8))
                                                 for c in CHANNELS[name]]
        assert all(torch.isfinite(f).all() for f in feats)


def _strided_convs(module: nn.Module, factor: int, reduction: tuple[str, ...] = (), g: int = 1):
    """Undo the dilation of ``module`` (dilations / ``factor``); the named reduction convs get
    stride 2 and dilation / ``g`` (their rate in the strided network)."""
    for name, m in module.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        f = g if name in reduction else factor
        if name in reduction:
            m.stride = (2, 2)
        d = tuple(x // f if k > 1 else 1 for x, k in zip(m.dilation, m.kernel_size))
        m.dilation = d
        m.padding = tuple(di * (k - 1) // 2 for di, k in zip(d, m.kernel_size))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "irnet"])
def test_dilated_equals_strided_network_subsampled(name):
    """The dilation follows the removed strides: each stage output, subsampled by the stride the
    original network has there, equals the same weights run with strided (padded) reductions,
    i.e. the network the ImageNet weights were trained as."""
    torch.manual_seed(0)
    kw = {"resnet18": {}, "resnet50": {"layers": (1, 1, 2, 2)}, "irnet": {"blocks": (1, 2, 2)}}[name]
    m = create_backbone(name, **kw).double()
    with torch.no_grad():
        randomize_frozen_bn(m)
    ref = copy.deepcopy(m)
    if name.startswith("resnet"):
        red = "conv1" if name == "resnet18" else "conv2"
        _strided_convs(ref.stages[1].layer3, 2, (f"0.{red}", "0.downsample.0"), g=1)
        _strided_convs(ref.stages[2].layer4, 4, (f"0.{red}", "0.downsample.0"), g=2)
    else:
        s2, s3 = ref.stages[1], ref.stages[2]
        _strided_convs(ref.stages[0].mixed_6a, 1, ("branch0.conv", "branch1.2.conv"))
        ref.stages[0].mixed_6a.branch2 = nn.MaxPool2d(3, stride=2, padding=1)
        _strided_convs(s2.repeat_1, 2)
        _strided_convs(s2.mixed_7a, 2, ("branch0.1.conv", "branch1.1.conv", "branch2.2.conv"), g=2)
        s2.mixed_7a.branch3 = nn.MaxPool2d(3, stride=2, padding=1)
        _strided_convs(s3, 4)
    x = torch.randn(1, 3, 77, 53, dtype=torch.float64)
    with torch.no_grad():
        f1, f2, f3 = m(x)
        r1 = ref.stages[0](x)
        r2 = ref.stages[1](r1)
        r3 = ref.stages[2](r2)
    # ResNet: layer3 (stage 2) and layer4 (stage 3) reduce. IRNet: reduction-A (mixed_6a) ends
    # stage 1 and reduction-B (mixed_7a) ends stage 2.
    steps = (2, 4, 4) if name == "irnet" else (1, 2, 4)
    assert f2.shape[-2:] == f1.shape[-2:] == f3.shape[-2:]
    for f, r, st in zip((f1, f2, f3), (r1, r2, r3), steps):
        torch.testing.assert_close(f[..., ::st, ::st], r)


# ----------------------------------------------------------------------------------------------
# frozen batch norm


def test_frozen_bn_matches_batchnorm_eval_and_folds():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(7, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5); bn.bias.normal_(); bn.running_mean.normal_(); bn.running_var.uniform_(0.5, 2)
    bn.eval()
    fbn = FrozenBatchNorm2d.from_batchnorm(bn)
    assert list(fbn.parameters()) == [] and fbn.eps == 1e-3
    x = torch.randn(2, 7, 5, 6, requires_grad=True)
    torch.testing.assert_close(fbn(x), bn(x))
    fbn(x).sum().backward()
    assert x.grad is not None
    conv = nn.Conv2d(4, 7, 3, padding=1, bias=False)
    scale, shift = fbn.scale_shift()
    folded = nn.Conv2d(4, 7, 3, padding=1)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None]); folded.bias.copy_(shift)
    y = torch.randn(1, 4, 9, 8)
    torch.testing.assert_close(folded(y), fbn(conv(y)), rtol=1e-5, atol=1e-5)


def test_freeze_batchnorm_converts_tree():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
    net = freeze_batchnorm(net)
    assert isinstance(net[1], FrozenBatchNorm2d) and isinstance(net[2][0], FrozenBatchNorm2d)
    assert torch.all(net[1].running_mean == 0.3)
    assert isinstance(freeze_batchnorm(nn.BatchNorm2d(3)), FrozenBatchNorm2d)


def test_frozen_bn_backbone_has_no_bn_params_and_does_not_change_in_train_mode():
    m = create_backbone("resnet18")
    with torch.no_grad():
        randomize_frozen_bn(m)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    n_conv = sum(p.numel() for x in m.modules() if isinstance(x, nn.Conv2d) for p in x.parameters())
    assert sum(p.numel() for p in m.parameters()) == n_conv
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    x = torch.randn(2, 3, 32, 40)
    out = m(x)
    sum(o.sum() for o in out).backward()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.eval()
    with torch.no_grad():
        out_eval = m(x)
    for a, b in zip(out, out_eval):
        torch.testing.assert_close(a.detach(), b)
    # a checkpoint with num_batches_tracked loads into a frozen BN
    fbn = FrozenBatchNorm2d(4)
    fbn.load_state_dict(nn.BatchNorm2d(4).state_dict())


# ----------------------------------------------------------------------------------------------
# checkpoint naming and loading


@pytest.mark.parametrize("name", ALL)
def test_reference_layout_maps_onto_real_size_backbone(name):
    """Every published ImageNet key (minus the classifier) maps to a backbone key of the same
    shape in the stage the brief assigns, and every backbone key is covered (meta device)."""
    m = meta_backbone(name)
    ref = reference_layout(name)
    ref_meta = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    mapped = backbone_state_dict_from_imagenet(name, ref_meta)
    own = {k: v.shape for k, v in m.state_dict().items()}
    expected = {f"stages.{expected_stage(name, k)}.{k}": s for k, s in ref.items()
                if not is_classifier(k) and not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    leftover = set(own) - set(expected)
    assert leftover == ({k for k in own if ".fc6." in k or ".fc7." in k} if name == "vgg16" else set())


def _assert_loaded(model, ref_sd, name):
    own = model.state_dict()
    for k, v in ref_sd.items():
        if is_classifier(k) or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[f"stages.{expected_stage(name, k)}.{k}"], v), k


@pytest.mark.parametrize("fmt", ["dict", "safetensors", "torch"])
def test_load_resnet18_torchvision_checkpoint(tmp_path, fmt):
    ref = make_reference_state_dict("resnet18")
    if fmt == "dict":
        src = ref
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        src = tmp_path / "resnet18.safetensors"
        save_file({k: v.contiguous() for k, v in ref.items()}, str(src))
    else:
        src = tmp_path / "resnet18.pth"
        torch.save(ref, src)
    m = create_backbone("resnet18")
    res = load_backbone_weights(m, src)
    assert res.missing_keys == [] and res.source_format == "imagenet"
    _assert_loaded(m, ref, "resnet18")
    # the inverse map reproduces the checkpoint (classifier and counters aside)
    back = backbone_state_dict_to_imagenet(m)
    assert set(back) == {k for k in ref if not is_classifier(k) and not k.endswith("num_batches_tracked")}


def test_load_irnet_timm_checkpoint_reduced(tmp_path):
    blocks = (1, 2, 1)
    ref = make_reference_state_dict("irnet", blocks=blocks)
    ref = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}  # timm's TF port
    from safetensors.torch import save_file
    path = tmp_path / "irnet.safetensors"
    save_file(ref, str(path))
    m = create_backbone("irnet", blocks=blocks)
    load_backbone_weights(m, path)
    _assert_loaded(m, ref, "irnet")
    # checkpoint with a training wrapper and a DataParallel prefix
    m2 = create_backbone("irnet", blocks=blocks)
    load_backbone_weights(m2, {"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3})
    _assert_loaded(m2, ref, "irnet")


def test_load_vgg16_keeps_new_layers():
    ref = make_reference_state_dict("vgg16")
    m = create_backbone("vgg16")
    fc6 = m.stages[2].fc6.weight.detach().clone()
    res = load_backbone_weights(m, ref)
    _assert_loaded(m, ref, "vgg16")
    assert torch.equal(m.stages[2].fc6.weight, fc6)
    assert res.missing_keys == []  # fc6/fc7 are not expected from an ImageNet checkpoint
    # ... but a full sparsecascade checkpoint must have them
    sd = m.state_dict()
    del sd["stages.2.fc7.bias"]
    with pytest.raises(ValueError, match=r"stages\.2\.fc7\.bias"):
        load_backbone_weights(create_backbone("vgg16"), sd)


def test_own_format_round_trip_through_wrapper(tmp_path):
    src = create_backbone("resnet18")
    with torch.no_grad():
        randomize_frozen_bn(src, seed=3)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_backbone("resnet18")
            self.head = nn.Conv2d(512, 3, 1)

    w = Wrapper()
    path = tmp_path / "own.pt"
    torch.save(src.state_dict(), path)
    res = load_backbone_weights(w, path)
    assert res.source_format == "sparsecascade"
    for k, v in src.state_dict().items():
        assert torch.equal(w.backbone.state_dict()[k], v)
    # a wrapper's own checkpoint (backbone.stages.* + other keys)
    w2 = Wrapper()
    load_backbone_weights(w2.backbone, w.state_dict())
    assert torch.equal(w2.backbone.stages[0].conv1.weight, src.stages[0].conv1.weight)


def test_trainable_bn_variant_loads_and_freezes_to_the_same_model():
    ref = make_reference_state_dict("resnet18", seed=7)
    frozen = create_backbone("resnet18")
    load_backbone_weights(frozen, ref)
    live = create_backbone("resnet18", norm_layer=nn.BatchNorm2d)
    load_backbone_weights(live, ref)  # num_batches_tracked is neither required nor copied
    live = freeze_batchnorm(live)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in live.modules())
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        for a, b in zip(live(x), frozen(x)):
            torch.testing.assert_close(a, b)


def test_missing_and_misshapen_tensors_raise_clear_errors():
    ref = make_reference_state_dict("resnet18")
    m = create_backbone("resnet18")
    before = m.stages[0].conv1.weight.detach().clone()

    bad = dict(ref)
    del bad["layer3.1.bn2.running_var"]
    bad["layer4.0.conv1.weight"] = torch.zeros(512, 256, 1, 1)
    bad["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    with pytest.raises(ValueError) as e:
        load_backbone_weights(m, bad)
    msg = str(e.value)
    assert "stages.1.layer3.1.bn2.running_var" in msg and "missing" in msg
    assert "stages.2.layer4.0.conv1.weight: expected (512, 256, 3, 3), got (512, 256, 1, 1)" in msg
    assert torch.equal(m.stages[0].conv1.weight, before)  # nothing copied on error

    extra = dict(ref, **{"layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected.*\n.*layer5.0.conv1.weight"):
        load_backbone_weights(m, extra)

    partial = {k: v for k, v in ref.items() if not k.startswith("layer4.")}
    res = load_backbone_weights(m, dict(partial, junk=torch.zeros(1)), strict=False)
    assert res.unexpected_keys == ["junk"]
    assert res.missing_keys and all(k.startswith("stages.2.layer4.") for k in res.missing_keys)
    # shapes are checked even without strict
    with pytest.raises(ValueError, match="wrong shape"):
        load_backbone_weights(m, {"conv1.weight": torch.zeros(64, 3, 3, 3)}, strict=False)
    with pytest.raises(TypeError):
        load_backbone_weights(nn.Linear(2, 2), ref)


def test_create_backbone_pretrained(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    ref = make_reference_state_dict("resnet18", seed=5)
    path = tmp_path / "model.safetensors"
    save_file(ref, str(path))
    m = create_backbone("resnet18", pretrained=str(path))
    _assert_loaded(m, ref, "resnet18")

    import huggingface_hub
    calls = {}

    def fake_download(repo_id, filename, **kw):
        calls.update(repo_id=repo_id, filename=filename, **kw)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    m = create_backbone("resnet18", pretrained=True, hub_kwargs={"local_files_only": True})
    _assert_loaded(m, ref, "resnet18")
    assert calls["repo_id"] == "timm/resnet18.tv_in1k" and calls["local_files_only"] is True
