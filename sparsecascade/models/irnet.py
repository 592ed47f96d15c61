"""Inception-ResNet-v2 ("IRNet") at output stride 8, as in Deep Layer Cascade (Li et al. 2017).

Module and parameter names are exactly those of timm's ``inception_resnet_v2`` (``conv2d_1a``
... ``conv2d_7b``; ``BasicConv2d`` = ``.conv`` (no bias) + ``.bn`` (eps 0.001) + ReLU), so the
ImageNet checkpoint (``timm/inception_resnet_v2.tf_in1k``) loads with the ``stages.<k>.`` prefix
stripped. Changes, none of which adds or reshapes a parameter:

* stem padded: the "valid" 3x3 convs/pools (``conv2d_1a``, ``conv2d_2a``, ``maxpool_3a``,
  ``conv2d_4a``, ``maxpool_5a``) get padding 1, so each stride-2 op maps n -> ceil(n/2) and the
  stem's output stride is 8 (512x512 -> 64x64; 97x131 -> 13x17);
* Reduction-A (``mixed_6a``) and Reduction-B (``mixed_7a``): their stride-2 3x3 convs and max
  pools run at stride 1, padded to keep the size;
* dilation follows the removed strides (DeepLab; the reduction block itself keeps the previous
  rate, as torchvision does for the first block of a dilated layer): ``mixed_6a`` rate 1,
  ``repeat_1`` (Block17, 1x7/7x1 convs) rate 2, ``mixed_7a`` (its 3x3 convs and its max pool,
  :class:`DilatedMaxPool2d`) rate 2, ``repeat_2`` / ``block8`` (Block8, 1x3/3x1 convs) rate 4
  (``conv2d_7b`` is 1x1). So stage 2's output subsampled by 2 and stage 3's by 4 equal those of
  the same network with strided reductions (padded: n -> ceil(n/2)) exactly.

Stages::

    stage 1: conv2d_1a .. maxpool_5a, mixed_5b, repeat (10 x Block35), mixed_6a   -> 1088
    stage 2: repeat_1 (20 x Block17), mixed_7a                                      -> 2080
    stage 3: repeat_2 (9 x Block8), block8 (no ReLU), conv2d_7b                    -> 1536

The residual blocks are typed (:class:`Block35`, :class:`Block17`, :class:`Block8`) and compute
``relu?(x + scale * conv2d(cat(branches(x))))`` with ``conv2d`` a 1x1 conv with bias, so a
wrapper can fuse the up-projection, the scaled residual add and the ReLU into one epilogue:
importing this module registers those region converters (``convert_to_region``) beside the blocks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import FrozenBatchNorm2d, convert_to_region, fuse_conv_bn, register_region_converter
from .registry import INCEPTION_MEAN, INCEPTION_STD, StagedBackbone, register_model

__all__ = [
    "DilatedMaxPool2d", "BasicConv2d", "Mixed_5b", "Block35", "Mixed_6a", "Block17", "Mixed_7a", "Block8",
    "build_irnet_stages", "irnet",
]

NormLayer = Callable[..., nn.Module]

default_cfgs = {
    "irnet": dict(
        hf_hub_id="timm/inception_resnet_v2.tf_in1k",
        url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/inception_resnet_v2-940b1cd6.pth",
        mean=INCEPTION_MEAN, std=INCEPTION_STD,
        first_conv="stages.0.conv2d_1a.conv", classifier="classif",
    ),
}

_BN_EPS = 1e-3


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN (eps 0.001) -> ReLU; attributes ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size, stride=1, padding=0,
                 dilation=1, norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=False)
        self.bn = norm_layer(out_planes, eps=_BN_EPS)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _same(kernel_size, dilation) -> tuple[int, int]:
    """Padding that keeps the size of a stride-1 conv with odd kernel."""
    k, d = _pair(kernel_size), _pair(dilation)
    return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)


class DilatedMaxPool2d(nn.MaxPool2d):
    """A ``kernel_size`` max pool at ``stride`` and ``dilation`` padded (with -inf) to keep the size
    at stride 1: ``padding = dilation * (kernel_size - 1) // 2``. torch's max pool refuses a
    padding over half the kernel, so the padding is applied explicitly."""

    def __init__(self, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(kernel_size, stride=stride, padding=pad, dilation=dilation)

    def forward(self, x):
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


def _reduction_pool(stride: int, dilation: int) -> nn.MaxPool2d:
    """The max-pool branch of a reduction block: timm's valid 3x3/2 pool at stride 2; at stride 1
    a size-keeping 3x3 pool at ``dilation`` (a plain ``nn.MaxPool2d`` when undilated)."""
    if stride != 1:
        return nn.MaxPool2d(3, stride=stride)
    if dilation == 1:
        return nn.MaxPool2d(3, stride=1, padding=1)
    return DilatedMaxPool2d(3, stride=1, dilation=dilation)


class Mixed_5b(nn.Module):
    """Inception-A style block after the stem: 192 -> 320 (96 + 64 + 96 + 64)."""

    def __init__(self, norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        self.branch0 = bc(192, 96, kernel_size=1)
        self.branch1 = nn.Sequential(bc(192, 48, kernel_size=1), bc(48, 64, kernel_size=5, padding=2))
        self.branch2 = nn.Sequential(bc(192, 64, kernel_size=1), bc(64, 96, kernel_size=3, padding=1),
                                     bc(96, 96, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                     bc(192, 64, kernel_size=1))

    def branches(self) -> tuple[nn.Module, ...]:
        return (self.branch0, self.branch1, self.branch2, self.branch3)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches()], 1)


class _ResidualInception(nn.Module):
    """Shared behaviour of Block35/17/8: ``relu?(x + scale * conv2d(cat(branches(x))))``."""

    scale: float
    conv2d: nn.Conv2d
    relu: nn.Module | None

    def branches(self) -> tuple[nn.Module, ...]:
        raise NotImplementedError

    @property
    def has_relu(self) -> bool:
        return self.relu is not None

    def forward(self, x):
        out = torch.cat([b(x) for b in self.branches()], 1)
        out = self.conv2d(out)
        out = out * self.scale + x
        if self.relu is not None:
            out = self.relu(out)
        return out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, relu={self.relu is not None}"


class Block35(_ResidualInception):
    """Inception-ResNet-A (35x35 grid in the paper), 320 channels; branches 32 / 32 / 64."""

    def __init__(self, scale: float = 1.0, dilation: int = 1, no_relu: bool = False,
                 norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        self.scale = float(scale)
        self.dilation = dilation
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        p = _same(3, dilation)
        self.branch0 = bc(320, 32, kernel_size=1)
        self.branch1 = nn.Sequential(bc(320, 32, kernel_size=1),
                                     bc(32, 32, kernel_size=3, padding=p, dilation=dilation))
        self.branch2 = nn.Sequential(bc(320, 32, kernel_size=1),
                                     bc(32, 48, kernel_size=3, padding=p, dilation=dilation),
                                     bc(48, 64, kernel_size=3, padding=p, dilation=dilation))
        self.conv2d = nn.Conv2d(128, 320, kernel_size=1, stride=1)
        self.relu = None if no_relu else nn.ReLU(inplace=False)

    def branches(self):
        return (self.branch0, self.branch1, self.branch2)


class Mixed_6a(nn.Module):
    """Reduction-A: 320 -> 1088 (384 + 384 + 320). ``stride=2`` is timm's (valid, no padding);
    ``stride=1`` (used here) pads the 3x3 convs / max pool to keep the size."""

    def __init__(self, stride: int = 1, dilation: int = 1, norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        self.stride, self.dilation = stride, dilation
        p_red = _same(3, dilation) if stride == 1 else 0
        p = _same(3, dilation)
        self.branch0 = bc(320, 384, kernel_size=3, stride=stride, padding=p_red, dilation=dilation)
        self.branch1 = nn.Sequential(
            bc(320, 256, kernel_size=1),
            bc(256, 256, kernel_size=3, padding=p, dilation=dilation),
            bc(256, 384, kernel_size=3, stride=stride, padding=p_red, dilation=dilation))
        self.branch2 = _reduction_pool(stride, dilation)

    def branches(self):
        return (self.branch0, self.branch1, self.branch2)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches()], 1)


class Block17(_ResidualInception):
    """Inception-ResNet-B (17x17 grid in the paper), 1088 channels; 1x7 / 7x1 convs dilated."""

    def __init__(self, scale: float = 1.0, dilation: int = 1, no_relu: bool = False,
                 norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        self.scale = float(scale)
        self.dilation = dilation
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        self.branch0 = bc(1088, 192, kernel_size=1)
        self.branch1 = nn.Sequential(
            bc(1088, 128, kernel_size=1),
            bc(128, 160, kernel_size=(1, 7), padding=_same((1, 7), dilation), dilation=(1, dilation)),
            bc(160, 192, kernel_size=(7, 1), padding=_same((7, 1), dilation), dilation=(dilation, 1)))
        self.conv2d = nn.Conv2d(384, 1088, kernel_size=1, stride=1)
        self.relu = None if no_relu else nn.ReLU(inplace=False)

    def branches(self):
        return (self.branch0, self.branch1)


class Mixed_7a(nn.Module):
    """Reduction-B: 1088 -> 2080 (384 + 288 + 320 + 1088). ``stride=1`` pads to keep the size."""

    def __init__(self, stride: int = 1, dilation: int = 1, norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        self.stride, self.dilation = stride, dilation
        p_red = _same(3, dilation) if stride == 1 else 0
        p = _same(3, dilation)
        self.branch0 = nn.Sequential(
            bc(1088, 256, kernel_size=1),
            bc(256, 384, kernel_size=3, stride=stride, padding=p_red, dilation=dilation))
        self.branch1 = nn.Sequential(
            bc(1088, 256, kernel_size=1),
            bc(256, 288, kernel_size=3, stride=stride, padding=p_red, dilation=dilation))
        self.branch2 = nn.Sequential(
            bc(1088, 256, kernel_size=1),
            bc(256, 288, kernel_size=3, padding=p, dilation=dilation),
            bc(288, 320, kernel_size=3, stride=stride, padding=p_red, dilation=dilation))
        self.branch3 = _reduction_pool(stride, dilation)

    def branches(self):
        return (self.branch0, self.branch1, self.branch2, self.branch3)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches()], 1)


class Block8(_ResidualInception):
    """Inception-ResNet-C (8x8 grid in the paper), 2080 channels; 1x3 / 3x1 convs dilated.
    ``no_relu=True`` for timm's final ``block8``."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False, dilation: int = 1,
                 norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        self.scale = float(scale)
        self.dilation = dilation
        bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
        self.branch0 = bc(2080, 192, kernel_size=1)
        self.branch1 = nn.Sequential(
            bc(2080, 192, kernel_size=1),
            bc(192, 224, kernel_size=(1, 3), padding=_same((1, 3), dilation), dilation=(1, dilation)),
            bc(224, 256, kernel_size=(3, 1), padding=_same((3, 1), dilation), dilation=(dilation, 1)))
        self.conv2d = nn.Conv2d(448, 2080, kernel_size=1, stride=1)
        self.relu = None if no_relu else nn.ReLU(inplace=False)

    def branches(self):
        return (self.branch0, self.branch1)


# --------------------------------------------------------------------------- region converters

class RegionBasicConv2d(BasicConv2d):
    """A converted :class:`BasicConv2d`: bn and relu are fused into the conv's epilogue."""

    def forward(self, x):
        return self.conv(x)


@register_region_converter(BasicConv2d)
def _convert_basic_conv(m: BasicConv2d) -> nn.Module:
    m.conv, m.bn = fuse_conv_bn(m.conv, m.bn, relu=True)
    m.relu = nn.Identity()
    m.__class__ = RegionBasicConv2d
    return m


def _residual_inception_forward(self, x):
    # relu?(x + scale * conv2d(cat(branches))) as one region conv with a scaled residual
    return self.conv2d(torch.cat([b(x) for b in self.branches()], 1), residual=x)


class RegionBlock35(Block35):
    forward = _residual_inception_forward


class RegionBlock17(Block17):
    forward = _residual_inception_forward


class RegionBlock8(Block8):
    forward = _residual_inception_forward


def _residual_inception_converter(region_class: type):
    def convert(m):
        for branch in m.branches():
            convert_to_region(branch)
        m.conv2d, _ = fuse_conv_bn(m.conv2d, None, relu=m.relu is not None, res_scale=float(m.scale))
        m.__class__ = region_class
        return m

    return convert


for _block, _region in ((Block35, RegionBlock35), (Block17, RegionBlock17), (Block8, RegionBlock8)):
    register_region_converter(_block)(_residual_inception_converter(_region))


# --------------------------------------------------------------------------- builder

def build_irnet_stages(blocks: Sequence[int] = (10, 20, 9),
                       norm_layer: NormLayer = FrozenBatchNorm2d) -> tuple[list[nn.Sequential], list[int]]:
    """Stages of the output-stride-8 Inception-ResNet-v2. ``blocks`` = numbers of Block35,
    Block17 and Block8-with-ReLU (the final ``block8`` without ReLU is always present)."""
    n35, n17, n8 = (int(b) for b in blocks)
    if min(n35, n17, n8) < 0 or len(tuple(blocks)) != 3:
        raise ValueError(f"blocks must be 3 non-negative counts, got {blocks!r}")
    bc = lambda *a, **k: BasicConv2d(*a, norm_layer=norm_layer, **k)  # noqa: E731
    s1 = nn.Sequential(OrderedDict(
        conv2d_1a=bc(3, 32, kernel_size=3, stride=2, padding=1),
        conv2d_2a=bc(32, 32, kernel_size=3, stride=1, padding=1),
        conv2d_2b=bc(32, 64, kernel_size=3, stride=1, padding=1),
        maxpool_3a=nn.MaxPool2d(3, stride=2, padding=1),
        conv2d_3b=bc(64, 80, kernel_size=1, stride=1),
        conv2d_4a=bc(80, 192, kernel_size=3, stride=1, padding=1),
        maxpool_5a=nn.MaxPool2d(3, stride=2, padding=1),
        mixed_5b=Mixed_5b(norm_layer=norm_layer),
        repeat=nn.Sequential(*[Block35(scale=0.17, norm_layer=norm_layer) for _ in range(n35)]),
        mixed_6a=Mixed_6a(stride=1, dilation=1, norm_layer=norm_layer),
    ))
    s2 = nn.Sequential(OrderedDict(
        repeat_1=nn.Sequential(*[Block17(scale=0.10, dilation=2, norm_layer=norm_layer) for _ in range(n17)]),
        mixed_7a=Mixed_7a(stride=1, dilation=2, norm_layer=norm_layer),
    ))
    s3 = nn.Sequential(OrderedDict(
        repeat_2=nn.Sequential(*[Block8(scale=0.20, dilation=4, norm_layer=norm_layer) for _ in range(n8)]),
        block8=Block8(scale=1.0, no_relu=True, dilation=4, norm_layer=norm_layer),
        conv2d_7b=bc(2080, 1536, kernel_size=1, stride=1),
    ))
    return [s1, s2, s3], [1088, 2080, 1536]


@register_model
def irnet(**kwargs) -> StagedBackbone:
    """Inception-ResNet-v2, output stride 8 (Deep Layer Cascade); stage channels (1088, 2080, 1536).
    Options: ``blocks=(10, 20, 9)`` (Block35, Block17, Block8 counts; shrink for tests),
    ``norm_layer``."""
    stages, chans = build_irnet_stages(**kwargs)
    cfg = dict(default_cfgs["irnet"], name="irnet")
    return StagedBackbone(stages, chans, mean=cfg["mean"], std=cfg["std"], output_stride=8,
                          name="irnet", default_cfg=cfg)
