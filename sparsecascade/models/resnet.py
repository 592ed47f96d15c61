"""Dilated ResNets (torchvision naming) at output stride 8, split into three stages.

As torchvision's ``resnet*(replace_stride_with_dilation=[False, True, True])``: ``layer3`` has
stride 1 and dilation 2, ``layer4`` stride 1 and dilation 4; the first block of a dilated
layer uses the previous dilation (its 1x1 downsample keeps stride 1). BatchNorm is frozen
(:class:`FrozenBatchNorm2d`, eps 1e-5).

Stages (keys are torchvision's with ``stages.<k>.`` prepended)::

    stage 1: conv1, bn1, relu, maxpool, layer1, layer2   -> 128 (BasicBlock) / 512 (Bottleneck)
    stage 2: layer3                                       -> 256 / 1024
    stage 3: layer4                                       -> 512 / 2048

Sizes: every stride-2 op maps n -> ceil(n / 2), so all stages output ceil(H/8) x ceil(W/8).

Importing this module registers the blocks' region converters (``convert_to_region``): each folds
the block's frozen BatchNorms and ReLUs into its convolutions and the residual add into the last
one's epilogue, and swaps the class for a subclass whose forward calls the fused convolutions.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

from torch import nn

from ..nn import FrozenBatchNorm2d, convert_to_region, fuse_conv_bn, register_region_converter
from .registry import IMAGENET_MEAN, IMAGENET_STD, StagedBackbone, register_model

__all__ = ["BasicBlock", "Bottleneck", "build_resnet_stages", "resnet18", "resnet50", "resnet101"]

NormLayer = Callable[[int], nn.Module]

default_cfgs = {
    "resnet18": dict(
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        hf_hub_id="timm/resnet18.tv_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        first_conv="stages.0.conv1", classifier="fc"),
    "resnet50": dict(
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        hf_hub_id="timm/resnet50.tv_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        first_conv="stages.0.conv1", classifier="fc"),
    "resnet101": dict(
        url="https://download.pytorch.org/models/resnet101-63fe2227.pth",
        hf_hub_id="timm/resnet101.tv_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        first_conv="stages.0.conv1", classifier="fc"),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``.

    torchvision refuses dilation in BasicBlock. Here ``conv1`` (which carries the stride) takes
    ``dilation`` and ``conv2`` takes ``dilation2`` (default: ``dilation``). In the first block of
    a dilated layer ``conv1`` keeps the previous rate and ``conv2`` already uses the new one, so
    the dilated network subsampled at its stride equals the strided network exactly (the same
    property torchvision's Bottleneck has with the stride on ``conv2``).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1,
                 norm_layer: NormLayer = FrozenBatchNorm2d, dilation2: int | None = None):
        super().__init__()
        dilation2 = dilation if dilation2 is None else dilation2
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation2)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride (and the dilation) sit on the 3x3 conv2.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1,
                 norm_layer: NormLayer = FrozenBatchNorm2d):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# --------------------------------------------------------------------------- region converters

class RegionBasicBlock(BasicBlock):
    """A converted :class:`BasicBlock`: ``relu(identity + bn2(conv2(...)))`` is conv2's epilogue."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)


class RegionBottleneck(Bottleneck):
    """A converted :class:`Bottleneck`: the residual add and the last ReLU are conv3's epilogue."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _region_converter(region_class: type, n_convs: int):
    """Converter of a ResNet block with convs conv1..convN, each followed by bnK: fold every BN and
    ReLU into its conv (the last one also takes the residual in ``region_class.forward``)."""

    def convert(m):
        for k in range(1, n_convs + 1):
            conv, bn = fuse_conv_bn(getattr(m, f"conv{k}"), getattr(m, f"bn{k}"), relu=True)
            setattr(m, f"conv{k}", conv)
            setattr(m, f"bn{k}", bn)
        if m.downsample is not None:
            convert_to_region(m.downsample)
        m.__class__ = region_class
        return m

    return convert


register_region_converter(BasicBlock)(_region_converter(RegionBasicBlock, 2))
register_region_converter(Bottleneck)(_region_converter(RegionBottleneck, 3))


# --------------------------------------------------------------------------- builders

class _LayerBuilder:
    """torchvision's ``ResNet._make_layer`` bookkeeping (inplanes, dilation)."""

    def __init__(self, block: type, norm_layer: NormLayer):
        self.block = block
        self.norm_layer = norm_layer
        self.inplanes = 64
        self.dilation = 1

    def make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        block, norm_layer = self.block, self.norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        extra = {"dilation2": self.dilation} if block is BasicBlock else {}
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation, norm_layer, **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)


def build_resnet_stages(block: type, layers: Sequence[int],
                        norm_layer: NormLayer = FrozenBatchNorm2d) -> tuple[list[nn.Sequential], list[int]]:
    """The three stages of a dilated (output stride 8) ResNet and their output channels."""
    if len(layers) != 4:
        raise ValueError(f"layers must give 4 block counts, got {layers!r}")
    b = _LayerBuilder(block, norm_layer)
    stem = OrderedDict(
        conv1=nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=norm_layer(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    stem["layer1"] = b.make_layer(64, layers[0])
    stem["layer2"] = b.make_layer(128, layers[1], stride=2)
    c1 = b.inplanes
    layer3 = b.make_layer(256, layers[2], stride=2, dilate=True)
    c2 = b.inplanes
    layer4 = b.make_layer(512, layers[3], stride=2, dilate=True)
    c3 = b.inplanes
    stages = [nn.Sequential(stem), nn.Sequential(OrderedDict(layer3=layer3)),
              nn.Sequential(OrderedDict(layer4=layer4))]
    for stage in stages:
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return stages, [c1, c2, c3]


def _create_resnet(variant: str, block: type, default_layers: Sequence[int], *,
                   layers: Sequence[int] | None = None,
                   norm_layer: NormLayer = FrozenBatchNorm2d) -> StagedBackbone:
    stages, chans = build_resnet_stages(block, tuple(layers or default_layers), norm_layer)
    cfg = dict(default_cfgs[variant], name=variant)
    return StagedBackbone(stages, chans, mean=cfg["mean"], std=cfg["std"], output_stride=8,
                          name=variant, default_cfg=cfg)


@register_model
def resnet18(**kwargs) -> StagedBackbone:
    """Dilated ResNet-18, output stride 8; stage channels (128, 256, 512).
    ``layers=(2, 2, 2, 2)`` may be overridden (e.g. for tests)."""
    return _create_resnet("resnet18", BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet50(**kwargs) -> StagedBackbone:
    """Dilated ResNet-50 (v1.5, torchvision), output stride 8; stage channels (512, 1024, 2048)."""
    return _create_resnet("resnet50", Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def resnet101(**kwargs) -> StagedBackbone:
    """Dilated ResNet-101 (v1.5, torchvision), output stride 8; stage channels (512, 1024, 2048)."""
    return _create_resnet("resnet101", Bottleneck, (3, 4, 23, 3), **kwargs)
