"""LC models from the built-in backbones: ``create_model("lc_resnet50", num_classes=21)``.

``lc_<backbone>`` wraps the registered dense backbone ``<backbone>`` (``sparsecascade.models``)
in a ``LayerCascade`` with the paper's default heads. ``load_backbone_weights`` loads a public
ImageNet checkpoint (timm / torchvision naming) into such a model.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from .cascade import LayerCascade
from .models import create_backbone, list_backbones
from .models import load_backbone_weights as _load_into_backbone

PREFIX = "lc_"


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Names accepted by ``create_model`` (``lc_irnet``, ``lc_resnet18``, ...), optionally glob-filtered;
    with ``pretrained=True``, the zoo names accepted by ``from_pretrained`` (``lc-irnet-voc``, ...)."""
    if pretrained:
        from .zoo import list_pretrained

        return list_pretrained(filter)
    names = sorted(PREFIX + b for b in list_backbones())
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


def create_model(name: str, num_classes: int, rho: float = 0.985, *, head_channels: int = 256,
                 backbone_weights: Any = None, class_names=None, palette=None, **backbone_kwargs) -> LayerCascade:
    """An LC model on a built-in backbone, output stride 8, BatchNorm frozen.

    ``backbone_weights``: an ImageNet state dict or file to load into the backbone (optional);
    ``backbone_kwargs`` go to the backbone builder (e.g. ``blocks=(2, 2, 2)`` for a small IRNet);
    ``class_names`` and ``palette`` (one RGB triple per class) describe the classes for users.
    ``model.config`` records all of it: ``save_pretrained`` writes it to ``config.json``.
    """
    if name not in list_models():
        raise ValueError(f"name: unknown model {name!r}; expected one of {list_models()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    backbone = create_backbone(name[len(PREFIX):], **backbone_kwargs)
    if backbone_weights is not None:
        _load_into_backbone(backbone, backbone_weights)
    model = LayerCascade(backbone.stages, rho=rho, num_classes=num_classes,
                         stage_channels=backbone.out_channels, head_channels=head_channels)
    model.architecture = name
    model.mean, model.std = tuple(backbone.mean), tuple(backbone.std)
    # The backbone shares its stage modules with the model (converted in place): loading weights
    # into it loads them into the model. A tuple keeps it out of the model's submodules.
    model.backbone_ref = (backbone,)
    model.config = dict(
        architecture=name, num_classes=num_classes, rho=rho, head_channels=head_channels,
        backbone_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in backbone_kwargs.items()},
        mean=list(model.mean), std=list(model.std),
        class_names=list(class_names) if class_names is not None else None,
        palette=[list(map(int, c)) for c in palette] if palette is not None else None,
        stages=[list(stage._modules) for stage in model.stages],
    )
    return model


def load_backbone_weights(model, state_dict_or_path, *, strict: bool = True):
    """Load an ImageNet checkpoint (timm / torchvision naming, ``.safetensors`` or torch file) into
    the backbone of an LC model from ``create_model`` (or into a ``StagedBackbone``). The classifier
    is ignored; missing or misshapen tensors raise a ``ValueError`` that lists them."""
    target = model.backbone_ref[0] if isinstance(model, LayerCascade) and hasattr(model, "backbone_ref") else model
    return _load_into_backbone(target, state_dict_or_path, strict=strict)
