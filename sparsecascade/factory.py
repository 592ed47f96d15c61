"""LC models by name: ``create_model("lc_resnet50", num_classes=21)``, and your own registered ones.

``lc_<backbone>`` wraps the registered dense backbone ``<backbone>`` (``sparsecascade.models``)
in a ``LayerCascade`` with the paper's default heads. ``load_backbone_weights`` loads a public
ImageNet checkpoint (timm / torchvision naming) into such a model.

``@register_cascade`` registers a function ``fn(num_classes, **kwargs) -> LayerCascade`` under its
name: ``create_model(name, num_classes, **kwargs)`` then builds it and records name and arguments in
``model.config``, which is how ``save_pretrained`` / ``from_pretrained`` rebuild a custom model.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Optional

from .cascade import LayerCascade
from .models import create_backbone, list_backbones
from .models import load_backbone_weights as _load_into_backbone

PREFIX = "lc_"
_CASCADE_BUILDERS: dict[str, Callable[..., LayerCascade]] = {}


def register_cascade(fn: Optional[Callable[..., LayerCascade]] = None, *, name: Optional[str] = None):
    """Decorator: register ``fn(num_classes, **kwargs) -> LayerCascade`` under ``name`` (default
    ``fn.__name__``) for ``create_model``, ``save_pretrained`` and ``from_pretrained``.

    ``from_pretrained`` of a saved custom model needs the module that registers its builder imported
    first (as timm's ``register_model``): it never imports code named in a config file.
    """
    def register(builder: Callable[..., LayerCascade]) -> Callable[..., LayerCascade]:
        key = name or builder.__name__
        if key.startswith(PREFIX) and key[len(PREFIX):] in list_backbones():
            raise ValueError(f"name: {key!r} is a built-in model; register the builder under another name")
        _CASCADE_BUILDERS[key] = builder
        return builder

    return register(fn) if fn is not None else register


def is_registered_cascade(name: str) -> bool:
    return name in _CASCADE_BUILDERS


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Names accepted by ``create_model`` (``lc_irnet``, ``lc_resnet18``, ...), optionally glob-filtered;
    with ``pretrained=True``, the zoo names accepted by ``from_pretrained`` (``lc-irnet-voc``, ...)."""
    if pretrained:
        from .zoo import list_pretrained

        return list_pretrained(filter)
    names = sorted([PREFIX + b for b in list_backbones()] + list(_CASCADE_BUILDERS))
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


def create_model(name: str, num_classes: int, rho: float = 0.985, *, head_channels: int = 256,
                 backbone_weights: Any = None, class_names=None, palette=None, **backbone_kwargs) -> LayerCascade:
    """An LC model on a built-in backbone (output stride 8, BatchNorm frozen), or a registered one.

    ``backbone_weights``: an ImageNet state dict or file to load into the backbone (optional);
    ``backbone_kwargs`` go to the backbone builder (e.g. ``blocks=(2, 2, 2)`` for a small IRNet), or
    to the builder registered under ``name`` (``@register_cascade``; ``head_channels`` and
    ``backbone_weights`` are then not used);
    ``class_names`` and ``palette`` (one RGB triple per class) describe the classes for users.
    ``model.config`` records all of it: ``save_pretrained`` writes it to ``config.json``.
    """
    if name not in list_models():
        raise ValueError(f"name: unknown model {name!r}; expected one of {list_models()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if name in _CASCADE_BUILDERS:
        if backbone_weights is not None:
            raise ValueError(f"backbone_weights: only the built-in lc_* models load them; {name!r} is a "
                             f"registered builder: load weights inside it")
        return _create_registered(name, num_classes, rho, class_names, palette, backbone_kwargs)
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


def _create_registered(name, num_classes, rho, class_names, palette, kwargs) -> LayerCascade:
    """Build with the registered builder; record its name and arguments for ``save_pretrained``."""
    model = _CASCADE_BUILDERS[name](num_classes=num_classes, **kwargs)
    if not isinstance(model, LayerCascade):
        raise TypeError(f"{name}: the registered builder returned a {type(model).__name__}, expected a LayerCascade")
    model.rho = rho
    model.architecture = name
    model.config = dict(
        architecture=name, num_classes=num_classes, rho=rho,
        model_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        class_names=list(class_names) if class_names is not None else None,
        palette=[list(map(int, c)) for c in palette] if palette is not None else None,
        stages=[list(stage._modules) for stage in model.stages],
    )
    if hasattr(model, "mean") and hasattr(model, "std"):
        model.config.update(mean=list(model.mean), std=list(model.std))
    return model


def load_backbone_weights(model, state_dict_or_path, *, strict: bool = True):
    """Load an ImageNet checkpoint (timm / torchvision naming, ``.safetensors`` or torch file) into
    the backbone of an LC model from ``create_model`` (or into a ``StagedBackbone``). The classifier
    is ignored; missing or misshapen tensors raise a ``ValueError`` that lists them."""
    target = model.backbone_ref[0] if isinstance(model, LayerCascade) and hasattr(model, "backbone_ref") else model
    return _load_into_backbone(target, state_dict_or_path, strict=strict)
