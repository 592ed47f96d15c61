"""LC models by name: ``create_model("lc_resnet50", num_classes=21)``, and your own registered ones.

``lc_<backbone>`` wraps the registered dense backbone ``<backbone>`` (``sparsecascade.models``)
in a ``LayerCascade`` with the paper's default heads. ``load_backbone_weights`` loads a public
ImageNet checkpoint (timm / torchvision naming) into such a model.

``@register_cascade`` registers a function ``fn(num_classes, **kwargs) -> LayerCascade`` under its
name: ``create_model(name, num_classes, **kwargs)`` then builds it and records name and arguments in
``model.config``, which is how ``save_pretrained`` / ``from_pretrained`` rebuild a custom model.

Every model returned here carries the user methods of :mod:`sparsecascade.pretrained`
(``model.segment``, ``model.save_pretrained``, ``model.pretrained_cfg``, ...: ``with_pretrained_api``).
"""
from __future__ import annotations

import contextlib
import fnmatch
import re
from typing import Any, Callable, Optional

from .cascade import LayerCascade
from .rho import Rho
from .pretrained import with_pretrained_api

PREFIX = "lc_"


def _backbones():
    """``sparsecascade.models``, imported when a model is first created or listed (importing
    sparsecascade imports no backbone family)."""
    from . import models

    return models

_CASCADE_BUILDERS: dict[str, Callable[..., LayerCascade]] = {}


def register_cascade(fn: Optional[Callable[..., LayerCascade]] = None, *, name: Optional[str] = None):
    """Decorator: register ``fn(num_classes, **kwargs) -> LayerCascade`` under ``name`` (default
    ``fn.__name__``) for ``create_model``, ``save_pretrained`` and ``from_pretrained``.

    ``from_pretrained`` of a saved custom model needs the module that registers its builder imported
    first (as timm's ``register_model``): it never imports code named in a config file.
    """
    def register(builder: Callable[..., LayerCascade]) -> Callable[..., LayerCascade]:
        key = name or builder.__name__
        if key.startswith(PREFIX) and key[len(PREFIX):] in _backbones().list_backbones():
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
    names = sorted([PREFIX + b for b in _backbones().list_backbones()] + list(_CASCADE_BUILDERS))
    return [n for n in names if not filter or fnmatch.fnmatch(n, filter)]


# -- create_model ------------------------------------------------------------------------------------
# the Hub options create_model(<architecture>, pretrained=True) passes to the ImageNet download
IMAGENET_HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")
_PRETRAINED_LOADER: Optional[Callable[..., LayerCascade]] = None


def set_pretrained_loader(loader: Callable[..., LayerCascade]) -> None:
    """``sparsecascade.hub`` registers ``from_pretrained`` here when it is imported, so that
    ``create_model(<zoo name>, pretrained=True)`` loads the zoo weights while this module, below the
    hub in the layering, imports nothing above it."""
    global _PRETRAINED_LOADER
    _PRETRAINED_LOADER = loader


def create_model(name: str, num_classes: Optional[int] = None, rho: Optional[Rho] = None, *,
                 pretrained: bool = False, head_channels: Optional[int] = None, backbone_weights: Any = None,
                 class_names=None, palette=None, **kwargs) -> LayerCascade:
    """An LC model on a built-in backbone (output stride 8, BatchNorm frozen), a registered one, or a zoo model.

    ``name``: an architecture of ``list_models()`` (``lc_resnet18``; ``num_classes`` required), or a zoo
    name of ``list_models(pretrained=True)`` (``lc-vgg16-camvid``: its architecture and classes).
    ``pretrained=True``: for a zoo name, its trained weights (``from_pretrained``: then ``kwargs`` are
    ``from_pretrained``'s: ``revision``, ``cache_dir``, ``local_files_only``, ``force_download``,
    ``token``, ``map_location``, ``strict``); for a built-in architecture, the backbone's ImageNet
    weights from the Hugging Face Hub (the backbone's ``default_cfg['hf_hub_id']``; ``revision``,
    ``cache_dir``, ``local_files_only`` and ``token`` go to the download), the heads initialised.
    ``rho``: the confidence threshold, or one per stage but the last (default 0.985; a zoo model's own
    with ``pretrained=True``).
    ``backbone_weights``: an ImageNet state dict or file to load into the backbone instead;
    other ``kwargs`` go to the backbone builder (e.g. ``blocks=(2, 2, 2)`` for a small IRNet), or
    to the builder registered under ``name`` (``@register_cascade``; ``head_channels`` and
    ``backbone_weights`` are then not used);
    ``class_names`` and ``palette`` (one RGB triple per class) describe the classes for users.
    ``model.config`` records all of it (``save_pretrained`` writes it to ``config.json``);
    ``model.pretrained_cfg`` shows its preprocessing and classes (``sparsecascade.pretrained.PretrainedCfg``).
    """
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained: expected True or False, got {pretrained!r}")
    if name not in list_models():
        from .zoo import ZOO

        if name in ZOO:
            return _create_zoo_model(name, ZOO[name], num_classes, rho, pretrained, head_channels,
                                     backbone_weights, class_names, palette, kwargs)
        raise ValueError(f"name: unknown model {name!r}; expected an architecture of {list_models()} "
                         f"or a zoo name of {list_models(pretrained=True)}")
    if num_classes is None:
        raise ValueError(f"num_classes: {name!r} is an architecture: create_model({name!r}, num_classes) needs the "
                         f"number of classes (a zoo name, {list_models(pretrained=True)}, knows its own)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    rho = 0.985 if rho is None else rho
    head_channels = 256 if head_channels is None else head_channels
    if name in _CASCADE_BUILDERS:
        if backbone_weights is not None:
            raise ValueError(f"backbone_weights: only the built-in lc_* models load them; {name!r} is a "
                             f"registered builder: load weights inside it")
        if pretrained:
            raise ValueError(f"pretrained: {name!r} is a registered builder, with no pretrained weights known to "
                             f"sparsecascade; load weights inside the builder, or save_pretrained it and use "
                             f"from_pretrained")
        return _create_registered(name, num_classes, rho, class_names, palette, kwargs)
    hub_options = {k: kwargs.pop(k) for k in IMAGENET_HUB_OPTIONS if k in kwargs}
    if hub_options and not pretrained:
        raise ValueError(f"{next(iter(hub_options))}: a Hub download option, used only with pretrained=True")
    backbone_name = name[len(PREFIX):]
    if pretrained:
        if backbone_weights is not None:
            raise ValueError("backbone_weights: give either pretrained=True (the ImageNet weights from the Hub) "
                             "or backbone_weights (a file or state dict), not both")
        if not _backbones().get_default_cfg(backbone_name).get("hf_hub_id"):
            raise ValueError(f"pretrained: the backbone {backbone_name!r} has no ImageNet weights on the Hub; "
                             f"pass backbone_weights=<checkpoint file> instead")
    with _naming_unknown_arguments(name, kwargs):
        create_backbone = _backbones().create_backbone
        backbone = (create_backbone(backbone_name, pretrained=True, hub_kwargs=hub_options, **kwargs) if pretrained
                    else create_backbone(backbone_name, **kwargs))
    if backbone_weights is not None:
        _backbones().load_into_backbone(backbone, backbone_weights)
    model = LayerCascade(backbone.stages, rho=rho, num_classes=num_classes,
                         stage_channels=backbone.out_channels, head_channels=head_channels)
    model.architecture = name
    model.mean, model.std = tuple(backbone.mean), tuple(backbone.std)
    # The backbone shares its stage modules with the model (converted in place): loading weights
    # into it loads them into the model. A tuple keeps it out of the model's submodules.
    model.backbone_ref = (backbone,)
    model.config = dict(
        architecture=name, num_classes=num_classes, rho=rho, head_channels=head_channels,
        backbone_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        mean=list(model.mean), std=list(model.std),
        class_names=list(class_names) if class_names is not None else None,
        palette=[list(map(int, c)) for c in palette] if palette is not None else None,
        stages=[list(stage._modules) for stage in model.stages],
    )
    if pretrained:
        model.config["backbone_pretrained"] = _backbones().get_default_cfg(backbone_name)["hf_hub_id"]
    return with_pretrained_api(model)


UNKNOWN_ARGUMENT = "not an argument of create_model nor of the builder of"  # hub matches it


@contextlib.contextmanager
def _naming_unknown_arguments(name: str, kwargs: dict):
    """A keyword argument the builder does not take: a one-line ValueError that names it (not the
    TypeError of a function deep inside the builder)."""
    try:
        yield
    except TypeError as e:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unknown is None or unknown.group(1) not in kwargs:
            raise
        raise ValueError(f"{unknown.group(1)}: {UNKNOWN_ARGUMENT} {name!r}") from None


def _create_zoo_model(name, entry, num_classes, rho, pretrained, head_channels, backbone_weights, class_names,
                      palette, kwargs) -> LayerCascade:
    """A zoo name: its trained weights (pretrained=True), else its architecture and classes, untrained."""
    if num_classes is not None and num_classes != entry.num_classes:
        raise ValueError(f"num_classes: {name} has {entry.num_classes} classes, got {num_classes!r}")
    if backbone_weights is not None:
        raise ValueError(f"backbone_weights: {name!r} is a zoo model; use pretrained=True for its weights, or "
                         f"create_model({entry.architecture!r}, {entry.num_classes}, backbone_weights=...)")
    if pretrained:
        if _PRETRAINED_LOADER is None:  # only when sparsecascade.factory is used without the package
            raise RuntimeError(f"pretrained: loading {name!r} needs sparsecascade.hub imported (import sparsecascade)")
        model_kwargs = {k: v for k, v in dict(head_channels=head_channels, class_names=class_names,
                                                  palette=palette).items() if v is not None}
        return _PRETRAINED_LOADER(name, rho=rho, **model_kwargs, **kwargs)
    model = create_model(entry.architecture, entry.num_classes, rho, head_channels=head_channels,
                         class_names=class_names, palette=palette, **kwargs)
    model.config.update(name=name, dataset=entry.dataset)
    return model


def _create_registered(name, num_classes, rho, class_names, palette, kwargs) -> LayerCascade:
    """Build with the registered builder; record its name and arguments for ``save_pretrained``."""
    with _naming_unknown_arguments(name, kwargs):
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
    return with_pretrained_api(model)


def load_backbone_weights(model, state_dict_or_path, *, strict: bool = True):
    """Load an ImageNet checkpoint (timm / torchvision naming, ``.safetensors`` or torch file) into
    the backbone of an LC model from ``create_model`` (or into a ``StagedBackbone``). The classifier
    is ignored; missing or misshapen tensors raise a ``ValueError`` that lists them."""
    target = model.backbone_ref[0] if isinstance(model, LayerCascade) and hasattr(model, "backbone_ref") else model
    return _backbones().load_into_backbone(target, state_dict_or_path, strict=strict)
