"""What a config builds: the model, the training data (with the model's input normalisation) and
the optimizer."""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from ..cascade import LayerCascade
from ..data import SegmentationDataset, build_dataset, train_transform
from ..factory import create_model
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int) -> LayerCascade:
    """The model of ``cfg.model`` (a registered name, or "module:function")."""
    kwargs = dict(cfg.model_kwargs)
    if ":" in cfg.model:
        module_name, _, fn_name = cfg.model.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model: cannot import {cfg.model!r} ({e}); expected 'package.module:function'") from None
        model = fn(num_classes=num_classes, **kwargs)
    else:
        model = create_model(cfg.model, num_classes, rho=cfg.rho, backbone_weights=cfg.backbone_weights, **kwargs)
    if not isinstance(model, LayerCascade):
        raise TypeError(f"model: {cfg.model!r} built a {type(model).__name__}, expected a LayerCascade")
    return model


def model_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean/std the model's backbone expects (ImageNet's when it does not say)."""
    return tuple(getattr(model, "mean", IMAGENET_MEAN)), tuple(getattr(model, "std", IMAGENET_STD))


def build_train_data(cfg: TrainConfig, model: nn.Module) -> SegmentationDataset:
    mean, std = model_normalization(model)
    transform = train_transform(cfg.crop_size, mean, std, scale_range=cfg.scale_range, flip=cfg.flip)
    return build_dataset(cfg.dataset, cfg.split, cfg.data_root, transform=transform, seed=cfg.seed)


def make_optimizer(model: LayerCascade, cfg: TrainConfig) -> torch.optim.SGD:
    backbone = [p for p in model.stages.parameters()]
    heads = [p for p in model.heads.parameters()]
    return torch.optim.SGD([dict(params=backbone, lr=cfg.lr), dict(params=heads, lr=cfg.lr * cfg.head_lr_mult)],
                           lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
