"""Backbone registry (timm style) and :class:`StagedBackbone`, the container every builder returns.

A *staged backbone* is a dense network cut into exactly three stages for the Deep Layer
Cascade. Stage 1 takes the normalised image ``(N, 3, H, W)``; every stage returns a map at
output stride 8, all three of the same spatial size::

    H' = ceil(H / 8),  W' = ceil(W / 8)

(each stride-2 reduction pads so that it maps ``n`` to ``ceil(n / 2)``, and nested ceilings
compose). Every stage is an ``nn.Sequential`` whose children keep the names of the ImageNet
checkpoint (``conv1``, ``layer3``, ``features``, ``mixed_5b`` ...), so a checkpoint key is
the backbone key with the ``stages.<k>.`` prefix stripped (see :mod:`.weights`).

The registry imports no family: each family module (``resnet``, ``vgg``, ``irnet``) registers its
builders with ``@register_model`` when it is imported, and ``sparsecascade.models`` imports them all
(as timm does), so any import of ``sparsecascade.models`` fills the registry.
"""
from __future__ import annotations

import fnmatch
import math
import sys
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = [
    "StagedBackbone",
    "register_model",
    "model_entrypoint",
    "list_backbones",
    "is_backbone",
    "get_default_cfg",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inception-ResNet-v2 (TF port in timm) expects inputs scaled to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

NUM_STAGES = 3


class StagedBackbone(nn.Module):
    """A dense backbone split into 3 stages, all at output stride 8.

    Attributes:
        stages: ``nn.ModuleList`` of 3 stage modules (``nn.Sequential``); stage 1 maps the
            image, stage k>1 maps the output of stage k-1.
        out_channels: channels of each stage's output.
        output_stride: 8 (every stage).
        mean, std: input normalisation the pretrained weights expect (RGB, in [0, 1] units).
        new_layers: checkpoint-style key prefixes (stage prefix stripped) of layers that do not
            exist in the ImageNet checkpoint (e.g. DeepLab-LargeFOV's ``fc6.``/``fc7.``); they
            keep their initialisation when ImageNet weights are loaded.
        default_cfg: the registry's per-variant settings (name, source checkpoints, ...).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        out_channels: Sequence[int],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        output_stride: int = 8,
        new_layers: Sequence[str] = (),
        name: str = "",
        default_cfg: dict[str, Any] | None = None,
    ):
        super().__init__()
        if len(stages) != NUM_STAGES or len(out_channels) != NUM_STAGES:
            raise ValueError(f"a StagedBackbone has exactly {NUM_STAGES} stages, "
                             f"got {len(stages)} stages and {len(out_channels)} channel counts")
        self.stages = nn.ModuleList(stages)
        self.out_channels = [int(c) for c in out_channels]
        self.output_stride = int(output_stride)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.new_layers = tuple(new_layers)
        self.name = name
        self.default_cfg = dict(default_cfg or {})

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of every stage's output for an ``height x width`` input."""
        s = self.output_stride
        return math.ceil(height / s), math.ceil(width / s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, out_channels={self.out_channels}, "
                f"output_stride={self.output_stride}")


# --------------------------------------------------------------------------- registry

_model_entrypoints: dict[str, Callable[..., StagedBackbone]] = {}
_model_to_module: dict[str, str] = {}
_default_cfgs: dict[str, dict[str, Any]] = {}


def register_model(fn: Callable[..., StagedBackbone]) -> Callable[..., StagedBackbone]:
    """Decorator: register a builder ``fn(pretrained=False, **kwargs) -> StagedBackbone``
    under ``fn.__name__``. The builder's module may hold ``default_cfgs[name]``."""
    name = fn.__name__
    if name in _model_entrypoints and _model_entrypoints[name] is not fn:
        warnings.warn(f"backbone {name!r} is registered again ({fn.__module__}); the new builder wins",
                      stacklevel=2)
    _model_entrypoints[name] = fn
    module = fn.__module__
    _model_to_module[name] = module.split(".")[-1]
    cfgs = getattr(sys.modules.get(module), "default_cfgs", None) or {}
    if name in cfgs:
        _default_cfgs[name] = cfgs[name]
    return fn


def list_backbones(filter: str | Sequence[str] = "") -> list[str]:
    """Sorted names of the registered backbones, optionally filtered by fnmatch pattern(s)."""
    names = sorted(_model_entrypoints)
    if filter:
        pats = [filter] if isinstance(filter, str) else list(filter)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    return names


def is_backbone(name: str) -> bool:
    return name in _model_entrypoints


def get_default_cfg(name: str) -> dict[str, Any]:
    if name not in _model_entrypoints:
        raise KeyError(_unknown(name))
    return dict(_default_cfgs.get(name, {}))


def _unknown(name: str) -> str:
    return f"unknown backbone {name!r}; available: {', '.join(sorted(_model_entrypoints))}"


def model_entrypoint(name: str) -> Callable[..., StagedBackbone]:
    """The builder registered under ``name`` (``fn(**kwargs) -> StagedBackbone``, random weights);
    :func:`~sparsecascade.models.builder.create_backbone` builds with weights."""
    if name not in _model_entrypoints:
        raise ValueError(_unknown(name))
    return _model_entrypoints[name]
