"""VGG-16 as DeepLab-LargeFOV (output stride 8), torchvision ``features.<i>`` naming kept.

Differences from torchvision's ``vgg16().features`` (no parameters change):

* pool1-pool3 (``features.4/9/16``): 2x2 stride 2 with ``ceil_mode=True`` (n -> ceil(n/2));
* pool4, pool5 (``features.23/30``): 3x3 stride 1 padding 1 (size kept);
* conv5_x (``features.24/26/28``): dilation 2, padding 2.

New layers (not in the ImageNet checkpoint, kept at their initialisation when it is loaded):
``fc6`` 3x3 conv, dilation 12, 512 -> 1024, and ``fc7`` 1x1 conv 1024 -> 1024, each + ReLU
(LargeFOV; DeepLab's dropout after them is left to the head/trainer).

Stages::

    stage 1: features.0-16  (conv1_1 .. conv3_3, pool3)            -> 256
    stage 2: features.17-23 (conv4_1 .. conv4_3, pool4 stride 1)   -> 512
    stage 3: features.24-30 (conv5_x dil 2, pool5 stride 1), fc6, relu6, fc7, relu7 -> 1024

All stage outputs are ceil(H/8) x ceil(W/8).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, StagedBackbone, register_model

__all__ = ["build_vgg16_largefov_stages", "vgg16"]

default_cfgs = {
    "vgg16": dict(
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        hf_hub_id="timm/vgg16.tv_in1k", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        first_conv="stages.0.features.0", classifier="classifier",
        new_layers=("fc6.", "fc7."),
    ),
}

# torchvision cfg "D"; each stage ends after the named pool.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_vgg16_largefov_stages(fc_channels: int = 1024, fc6_dilation: int = 12) -> tuple[list[nn.Sequential], list[int]]:
    layers: list[tuple[str, nn.Module]] = []
    in_ch, pool_idx, dilation = 3, 0, 1
    for v in _VGG16_CFG:
        i = str(len(layers))
        if v == "M":
            pool_idx += 1
            if pool_idx <= 3:
                layers.append((i, nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)))
            else:
                layers.append((i, nn.MaxPool2d(kernel_size=3, stride=1, padding=1)))
                if pool_idx == 4:
                    dilation = 2  # conv5 follows the removed pool4 stride
        else:
            layers.append((i, nn.Conv2d(in_ch, v, kernel_size=3, padding=dilation, dilation=dilation)))
            layers.append((str(len(layers)), nn.ReLU(inplace=True)))
            in_ch = v
    assert [n for n, _ in layers][-1] == "30"
    cut1, cut2 = 17, 24  # after pool3 (features.16) and pool4 (features.23)
    s1 = nn.Sequential(OrderedDict(features=nn.Sequential(OrderedDict(layers[:cut1]))))
    s2 = nn.Sequential(OrderedDict(features=nn.Sequential(OrderedDict(layers[cut1:cut2]))))
    s3 = nn.Sequential(OrderedDict(
        features=nn.Sequential(OrderedDict(layers[cut2:])),
        fc6=nn.Conv2d(512, fc_channels, kernel_size=3, padding=fc6_dilation, dilation=fc6_dilation),
        relu6=nn.ReLU(inplace=True),
        fc7=nn.Conv2d(fc_channels, fc_channels, kernel_size=1),
        relu7=nn.ReLU(inplace=True),
    ))
    stages = [s1, s2, s3]
    for stage in stages:
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return stages, [256, 512, fc_channels]


@register_model
def vgg16(**kwargs) -> StagedBackbone:
    """VGG-16 DeepLab-LargeFOV, output stride 8; stage channels (256, 512, 1024).
    Options: ``fc_channels=1024``, ``fc6_dilation=12``."""
    stages, chans = build_vgg16_largefov_stages(**kwargs)
    cfg = dict(default_cfgs["vgg16"], name="vgg16")
    return StagedBackbone(stages, chans, mean=cfg["mean"], std=cfg["std"], output_stride=8,
                          new_layers=cfg["new_layers"], name="vgg16", default_cfg=cfg)
