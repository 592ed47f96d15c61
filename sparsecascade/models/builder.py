"""``create_backbone``: a registered backbone built, with ImageNet or given weights loaded (as timm's
``_builder`` over its ``_registry``: the registry knows builders, this module adds the weights)."""
from __future__ import annotations

from typing import Any

from .registry import StagedBackbone, model_entrypoint
from .weights import download_imagenet_weights, load_into_backbone

__all__ = ["create_backbone"]


def create_backbone(name: str, pretrained: Any = False, **kwargs: Any) -> StagedBackbone:
    """Build a registered backbone.

    Args:
        name: a name from :func:`list_backbones` (``resnet18``, ``resnet50``, ``resnet101``,
            ``vgg16``, ``irnet``).
        pretrained: ``False`` (random init), a state dict or a path to a ``.safetensors`` /
            torch checkpoint in torchvision/timm or sparsecascade naming (loaded strictly by
            :func:`~sparsecascade.models.weights.load_into_backbone`), or ``True`` to
            download the variant's ImageNet weights from the Hugging Face Hub
            (``default_cfg['hf_hub_id']``; ``hub_kwargs={...}`` is passed to
            ``hf_hub_download``: ``revision``, ``cache_dir``, ``local_files_only``, ``token``).
        **kwargs: builder options (e.g. ``layers=(2, 2, 2, 2)`` for ResNets, ``blocks=(10, 20, 9)``
            for IRNet, ``norm_layer``).
    """
    hub_kwargs = kwargs.pop("hub_kwargs", None) or {}
    model = model_entrypoint(name)(**kwargs)
    if pretrained is not False and pretrained is not None:
        source = download_imagenet_weights(name, **hub_kwargs) if pretrained is True else pretrained
        load_into_backbone(model, source, strict=True)
    return model
