"""Region converters for the typed blocks of the built-in backbones: fuse their epilogues.

Each converter folds a block's frozen BatchNorms, ReLUs and residual add into its convolutions
(``relu(x + scale * conv(...))`` becomes one region convolution with a scaled-residual epilogue)
and swaps the block's class for a subclass whose forward calls the fused convolutions. Parameter
names and the dense result of the block are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models.irnet import BasicConv2d, Block8, Block17, Block35
from .models.resnet import BasicBlock, Bottleneck
from .region import convert_to_region, fold, register_region_converter


class RegionBasicConv2d(BasicConv2d):
    def forward(self, x):
        return self.conv(x)  # bn and relu are fused into the conv's epilogue


@register_region_converter(BasicConv2d)
def _basic_conv(m: BasicConv2d) -> nn.Module:
    m.conv, m.bn = fold(m.conv, m.bn, relu=True)
    m.relu = nn.Identity()
    m.__class__ = RegionBasicConv2d
    return m


class RegionBasicBlock(BasicBlock):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)  # relu(identity + bn2(conv2(...)))


class RegionBottleneck(Bottleneck):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _resnet_block(region_class, n_convs: int):
    """Converter of a ResNet block with convs conv1..convN, each followed by bnK: fold every BN and
    ReLU into its conv (the last one also takes the residual in ``region_class.forward``)."""

    def convert(m):
        for k in range(1, n_convs + 1):
            conv, bn = fold(getattr(m, f"conv{k}"), getattr(m, f"bn{k}"), relu=True)
            setattr(m, f"conv{k}", conv)
            setattr(m, f"bn{k}", bn)
        if m.downsample is not None:
            convert_to_region(m.downsample)
        m.__class__ = region_class
        return m

    return convert


register_region_converter(BasicBlock)(_resnet_block(RegionBasicBlock, 2))
register_region_converter(Bottleneck)(_resnet_block(RegionBottleneck, 3))


def _residual_inception_forward(self, x):
    # relu?(x + scale * conv2d(cat(branches))) as one region conv with a scaled residual
    return self.conv2d(torch.cat([b(x) for b in self.branches()], 1), residual=x)


def _residual_inception(region_class):
    def convert(m):
        for branch in m.branches():
            convert_to_region(branch)
        m.conv2d, _ = fold(m.conv2d, None, relu=m.relu is not None, res_scale=float(m.scale))
        m.__class__ = region_class
        return m

    return convert


class RegionBlock35(Block35):
    forward = _residual_inception_forward


class RegionBlock17(Block17):
    forward = _residual_inception_forward


class RegionBlock8(Block8):
    forward = _residual_inception_forward


for _block, _region in ((Block35, RegionBlock35), (Block17, RegionBlock17), (Block8, RegionBlock8)):
    register_region_converter(_block)(_residual_inception(_region))
