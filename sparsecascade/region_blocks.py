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


@register_region_converter(BasicBlock)
def _basic_block(m: BasicBlock) -> nn.Module:
    m.conv1, m.bn1 = fold(m.conv1, m.bn1, relu=True)
    m.conv2, m.bn2 = fold(m.conv2, m.bn2, relu=True)
    if m.downsample is not None:
        convert_to_region(m.downsample)
    m.__class__ = RegionBasicBlock
    return m


class RegionBottleneck(Bottleneck):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


@register_region_converter(Bottleneck)
def _bottleneck(m: Bottleneck) -> nn.Module:
    m.conv1, m.bn1 = fold(m.conv1, m.bn1, relu=True)
    m.conv2, m.bn2 = fold(m.conv2, m.bn2, relu=True)
    m.conv3, m.bn3 = fold(m.conv3, m.bn3, relu=True)
    if m.downsample is not None:
        convert_to_region(m.downsample)
    m.__class__ = RegionBottleneck
    return m


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
