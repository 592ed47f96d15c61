"""Backbones for the Deep Layer Cascade: dense, output stride 8, split into three stages."""
from ..nn import FrozenBatchNorm2d, freeze_batchnorm
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    StagedBackbone,
    get_default_cfg,
    is_backbone,
    list_backbones,
    model_entrypoint,
    register_model,
)
from .builder import create_backbone
from .resnet import BasicBlock, Bottleneck, resnet18, resnet50, resnet101
from .vgg import vgg16
from .irnet import (
    BasicConv2d,
    Block8,
    DilatedMaxPool2d,
    Block17,
    Block35,
    Mixed_5b,
    Mixed_6a,
    Mixed_7a,
    irnet,
)
from .weights import (
    LoadResult,
    backbone_state_dict_from_imagenet,
    backbone_state_dict_to_imagenet,
    download_imagenet_weights,
    imagenet_key_map,
    load_into_backbone,
    read_state_dict,
)

__all__ = [
    "FrozenBatchNorm2d", "freeze_batchnorm",
    "StagedBackbone", "register_model", "create_backbone", "list_backbones", "is_backbone",
    "get_default_cfg", "model_entrypoint", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD",
    "BasicBlock", "Bottleneck", "resnet18", "resnet50", "resnet101",
    "vgg16",
    "BasicConv2d", "DilatedMaxPool2d", "Mixed_5b", "Block35", "Mixed_6a", "Block17", "Mixed_7a", "Block8", "irnet",
    "LoadResult", "load_into_backbone", "backbone_state_dict_from_imagenet",
    "backbone_state_dict_to_imagenet", "imagenet_key_map", "read_state_dict",
    "download_imagenet_weights",
]
