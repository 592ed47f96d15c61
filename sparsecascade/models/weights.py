"""Loading ImageNet (torchvision / timm) or sparsecascade checkpoints into a StagedBackbone.

Every backbone key is ``stages.<k>.<checkpoint key>``: the module tree of each stage keeps the
names of the public ImageNet model, so the map between the two namings is read off the
backbone itself (:func:`imagenet_key_map`) and needs no per-family tables. Classifier tensors
(``fc.*``, ``classifier.*``, ``last_linear.*``, ``classif.*``, timm's ``head.*`` /
``pre_logits.*``) and BatchNorm ``num_batches_tracked`` counters are dropped.

Accepted inputs: a state dict, a checkpoint dict holding one under ``state_dict`` / ``model``,
or a path to a ``.safetensors`` file or a torch file (``torch.load(weights_only=True)``).
Keys may carry a ``module.`` prefix (DataParallel); a sparsecascade checkpoint may be the
backbone's own (``stages.*``) or a wrapper's (``backbone.stages.*``; other keys ignored).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from .registry import StagedBackbone, get_default_cfg, model_entrypoint

__all__ = [
    "CLASSIFIER_PREFIXES",
    "LoadResult",
    "read_state_dict",
    "imagenet_key_map",
    "backbone_state_dict_from_imagenet",
    "backbone_state_dict_to_imagenet",
    "load_into_backbone",
    "download_imagenet_weights",
]

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "last_linear.", "classif.", "head.", "pre_logits.",
                       "AuxLogits.", "aux_logits.")
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_STAGE_KEY = re.compile(r"^stages\.(\d+)\.(.+)$")


class LoadResult(NamedTuple):
    missing_keys: list[str]      # backbone keys left at their initialisation
    unexpected_keys: list[str]   # checkpoint keys that were not used (strict=False only)
    source_format: str           # "imagenet" or "sparsecascade"


def read_state_dict(source: Any) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a dict / checkpoint dict / ``.safetensors`` or torch path."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path!r}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd: Any = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        sd = source
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict (mapping of tensors), got {type(sd).__name__}")
    for wrap in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd.get(wrap), Mapping):  # training checkpoint {"state_dict": {...}, ...}
            sd = sd[wrap]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue  # e.g. metadata entries in a training checkpoint
        out[k] = v
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def _as_backbone(obj: Any) -> nn.Module:
    """The module whose keys are ``stages.<k>.*``: a StagedBackbone, ``obj.backbone``, or any
    module with a ``stages`` ModuleList."""
    if isinstance(obj, StagedBackbone):
        return obj
    bb = getattr(obj, "backbone", None)
    if isinstance(bb, nn.Module) and isinstance(getattr(bb, "stages", None), nn.ModuleList):
        return bb
    if isinstance(obj, nn.Module) and isinstance(getattr(obj, "stages", None), nn.ModuleList):
        return obj
    raise TypeError(f"expected a StagedBackbone, a module with .backbone, or a module with a "
                    f".stages ModuleList; got {type(obj).__name__}")


def _ignored(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _IGNORED_SUFFIXES


def imagenet_key_map(backbone: nn.Module) -> dict[str, str]:
    """``{checkpoint key: backbone key}``, e.g. ``layer3.0.conv1.weight -> stages.1.layer3.0.conv1.weight``."""
    backbone = _as_backbone(backbone)
    out: dict[str, str] = {}
    for key in backbone.state_dict():
        m = _STAGE_KEY.match(key)
        if m is None or _ignored(key):
            continue
        src = m.group(2)
        if src in out:
            raise RuntimeError(f"checkpoint name {src!r} is used by two stages ({out[src]}, {key})")
        out[src] = key
    return out


def _is_classifier(key: str) -> bool:
    return key.startswith(CLASSIFIER_PREFIXES)


def _detect_and_map(backbone: nn.Module, sd: Mapping[str, torch.Tensor]):
    """-> (mapped state dict, unexpected keys, source format)."""
    sd = {k: v for k, v in sd.items() if not _ignored(k)}
    if any(k.startswith("backbone.stages.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if any(k.startswith("stages.") for k in sd):
        own = set(k for k in backbone.state_dict() if not _ignored(k))
        mapped = {k: v for k, v in sd.items() if k in own}
        unexpected = sorted(k for k in sd if k not in own)
        return mapped, unexpected, "sparsecascade"
    kmap = imagenet_key_map(backbone)
    mapped, unexpected = {}, []
    for k, v in sd.items():
        if k in kmap:
            mapped[kmap[k]] = v
        elif not _is_classifier(k):
            unexpected.append(k)
    return mapped, sorted(unexpected), "imagenet"


def _required_keys(backbone: nn.Module, source_format: str) -> list[str]:
    new_layers = tuple(getattr(backbone, "new_layers", ()) or ())
    keys = []
    for key in backbone.state_dict():
        if _ignored(key):
            continue
        if source_format == "imagenet" and new_layers:
            m = _STAGE_KEY.match(key)
            if m is not None and m.group(2).startswith(new_layers):
                continue
        keys.append(key)
    return keys


def _fmt_shape(s) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


def _check(backbone: nn.Module, mapped: Mapping[str, torch.Tensor], unexpected: list[str],
           source_format: str, strict: bool) -> list[str]:
    own = backbone.state_dict()
    required = _required_keys(backbone, source_format)
    missing = [k for k in required if k not in mapped]
    misshapen = [(k, tuple(own[k].shape), tuple(v.shape)) for k, v in mapped.items()
                 if tuple(own[k].shape) != tuple(v.shape)]
    problems = []
    if misshapen:
        problems.append(f"{len(misshapen)} tensor(s) with the wrong shape:\n" + "\n".join(
            f"  {k}: expected {_fmt_shape(e)}, got {_fmt_shape(g)}" for k, e, g in misshapen))
    if strict and missing:
        problems.append(f"{len(missing)} missing tensor(s):\n" + "\n".join(
            f"  {k} (expected {_fmt_shape(own[k].shape)})" for k in missing))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s):\n" + "\n".join(
            f"  {k}" for k in unexpected))
    if problems:
        name = getattr(backbone, "name", "") or type(backbone).__name__
        raise ValueError(f"cannot load {source_format} weights into backbone {name!r}:\n"
                         + "\n".join(problems))
    return missing


def backbone_state_dict_from_imagenet(name_or_backbone: str | nn.Module,
                                      state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
                                      *, strict: bool = True, **builder_kwargs) -> dict[str, torch.Tensor]:
    """Convert a torchvision / timm ImageNet state dict to backbone keys (``stages.<k>.*``).

    ``name_or_backbone`` is a registered name (the backbone's key layout is read from a copy
    built on the meta device with ``builder_kwargs``, e.g. ``blocks=(1, 1, 1)``) or a backbone.
    The classifier and ``num_batches_tracked`` are dropped. With ``strict`` (default), keys
    that do not belong to the backbone, missing keys and wrong shapes raise ``ValueError``;
    wrong shapes always do.
    """
    if isinstance(name_or_backbone, str):
        with torch.device("meta"):
            backbone = model_entrypoint(name_or_backbone)(**builder_kwargs)
    else:
        backbone = _as_backbone(name_or_backbone)
    sd = read_state_dict(state_dict)
    mapped, unexpected, fmt = _detect_and_map(backbone, sd)
    _check(backbone, mapped, unexpected, fmt, strict)
    return mapped


def backbone_state_dict_to_imagenet(backbone: nn.Module,
                                    state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The inverse map: backbone keys -> torchvision/timm keys (new layers such as ``fc6`` keep
    their stripped names)."""
    backbone = _as_backbone(backbone)
    sd = backbone.state_dict() if state_dict is None else state_dict
    inv = {v: k for k, v in imagenet_key_map(backbone).items()}
    return {inv[k]: v for k, v in sd.items() if k in inv}


def load_into_backbone(model_or_backbone: Any, state_dict_or_path: Any, *,
                          strict: bool = True) -> LoadResult:
    """Load weights into a :class:`StagedBackbone` (or ``obj.backbone``, or any module with a
    ``stages`` ModuleList), in place.

    ``state_dict_or_path``: a state dict or a path (``.safetensors`` or a torch file), in
    torchvision/timm naming (``conv1.weight``, ``features.0.weight``, ``mixed_5b...``; the
    classifier is ignored; layers listed in ``backbone.new_layers`` keep their initialisation)
    or in sparsecascade naming (``stages.*`` or a wrapper's ``backbone.stages.*``).

    Raises ``ValueError`` listing tensors with the wrong shape (always) and, with ``strict``,
    missing and unexpected tensors, naming each with expected vs got shapes. Nothing is copied
    when it raises. Tensors are cast to the backbone's dtype/device.
    """
    backbone = _as_backbone(model_or_backbone)
    sd = read_state_dict(state_dict_or_path)
    mapped, unexpected, fmt = _detect_and_map(backbone, sd)
    missing = _check(backbone, mapped, unexpected, fmt, strict)
    own = backbone.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)
    return LoadResult(missing_keys=missing, unexpected_keys=unexpected if not strict else [],
                      source_format=fmt)


def download_imagenet_weights(name: str, *, filename: str = "model.safetensors", revision: str | None = None,
                              cache_dir: str | None = None, local_files_only: bool = False,
                              token: str | bool | None = None) -> str:
    """Path to the variant's ImageNet checkpoint from the Hugging Face Hub (``default_cfg['hf_hub_id']``,
    timm's copies of the torchvision / TF weights). Returns the cached file's path."""
    cfg = get_default_cfg(name)
    repo_id = cfg.get("hf_hub_id")
    if not repo_id:
        raise ValueError(f"backbone {name!r} has no Hub checkpoint; pass a path or state dict instead")
    from huggingface_hub import hf_hub_download
    return hf_hub_download(repo_id, filename, revision=revision or cfg.get("hf_hub_revision"),
                           cache_dir=cache_dir, local_files_only=local_files_only, token=token)
