"""What a config builds: the model, the training data (with the model's input normalisation) and
the optimizer."""
from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn as nn

from ..cascade import LayerCascade
from ..data import SegmentationDataset, build_dataset, train_transform
from ..factory import create_model
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int) -> LayerCascade:
    """The model of ``cfg.model`` (a registered name, or "module:function"), with ``cfg.backbone_weights``
    loaded unless ``cfg.init_weights`` will replace every weight."""
    kwargs = dict(cfg.model_kwargs)
    if ":" in cfg.model:
        module_name, _, fn_name = cfg.model.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model: cannot import {cfg.model!r} ({e}); expected 'package.module:function'") from None
        model = fn(num_classes=num_classes, **kwargs)
    else:
        # init_weights replaces every weight (checked), so the backbone file is not read and need not exist
        backbone = cfg.backbone_weights if cfg.init_weights is None else None
        model = create_model(cfg.model, num_classes, rho=cfg.rho, backbone_weights=backbone, **kwargs)
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


def new_layer_names(model: LayerCascade) -> set[str]:
    """Names (``stages.<k>.<name>``) of the stage parameters that no pretrained backbone checkpoint
    holds (the backbone's ``new_layers``, e.g. VGG's fc6/fc7): they learn from scratch, like the heads."""
    backbone = getattr(model, "backbone_ref", (None,))[0]
    prefixes = tuple(getattr(backbone, "new_layers", ()) or ())
    if not prefixes:
        return set()
    names = set()
    for name, _ in model.stages.named_parameters():
        within_stage = name.split(".", 1)[1]  # "<k>.<name>" -> "<name>"
        if within_stage.startswith(prefixes):
            names.add(f"stages.{name}")
    return names


def make_optimizer(model: LayerCascade, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with two rates: ``lr`` for the (pretrained) backbone, ``lr * head_lr_mult`` for the layers
    that start from scratch: the heads and the backbone's new layers."""
    new = new_layer_names(model)
    pretrained = [p for n, p in model.stages.named_parameters(prefix="stages") if n not in new]
    scratch = [p for n, p in model.stages.named_parameters(prefix="stages") if n in new]
    scratch += list(model.heads.parameters())
    return torch.optim.SGD([dict(params=pretrained, lr=cfg.lr), dict(params=scratch, lr=cfg.lr * cfg.head_lr_mult)],
                           lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def median_frequency_weights(dataset: SegmentationDataset, power: float = 1.0) -> list[float]:
    """Per-class loss weights ``(median(f) / f_c) ** power`` from the label frequencies f_c of
    ``dataset`` (SegNet's median-frequency balancing; ``power=0.5`` damps it). f_c is the share of
    class c among the labelled pixels of the images where c occurs; a class that never occurs gets 1."""
    n = dataset.num_classes
    counts = np.zeros(n, np.float64)
    present_pixels = np.zeros(n, np.float64)
    for i in range(len(dataset)):
        _, label = dataset.load(i)
        per_class = np.bincount(label[label < n].ravel(), minlength=n)[:n]
        counts += per_class
        present_pixels += (per_class > 0) * per_class.sum()
    seen = counts > 0
    freq = np.where(seen, counts / np.maximum(present_pixels, 1), np.nan)
    weights = np.where(seen, (np.nanmedian(freq) / freq) ** power, 1.0)
    return [round(float(w), 4) for w in weights]
