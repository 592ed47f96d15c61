"""Load LC models saved as ``config.json`` + ``model.safetensors`` + a model card (writing them and
publishing them is :mod:`sparsecascade.save`'s; ``save_pretrained`` and ``push_to_hub`` are named here too).

``from_pretrained`` resolves a local folder, then a zoo name (weights shipped with the package,
else its Hub repository), then a Hub repo id; Hub files come from the Hugging Face cache or are
downloaded (one ``snapshot_download`` of the config, the weights and the card), honouring
``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``HF_HOME``, ``local_files_only`` and ``force_download``.
A name that looks like a local path (``./x``, ``~/x``, ``a/b/c``, or ``a/b`` where ``a/`` exists
here) is only ever a local folder: a typo fails at once, with no Hub request.

Weights are trusted only when they check out: ``save_pretrained`` records the SHA-256 of
``model.safetensors`` in ``config.json`` (``weights_sha256``) and every load (a local folder, the
package's shipped weights, a Hub snapshot) compares the file with it; safetensors itself checks only
the header. Weights load strictly: a missing, unexpected, misshapen or non-finite tensor is an
error, never random weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from .cascade import LayerCascade
from .rho import Rho, check_rho
from .factory import UNKNOWN_ARGUMENT, create_model, is_registered_cascade, list_models, set_pretrained_loader
from .pretrained import with_pretrained_api
from .save import (CARD_NAME, CHECKSUM_KEY, CONFIG_KEYS, CONFIG_NAME, DATASET_NAMES, DEFAULT_LICENSE,  # noqa: F401
                   MODEL_INDEX_METRICS, WEIGHTS_NAME, check_finite, file_sha256, model_card, model_config,
                   push_to_hub, save_pretrained)
from .zoo import ZOO, list_pretrained

SHIPPED_DIR = Path(__file__).parent / "weights"  # package data: zoo weights that work offline
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]  # what from_pretrained takes from a Hub repository



def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from e
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path}: config lacks {missing}; expected the keys written by save_pretrained")
    check_rho(config["rho"], name=f"{path}: rho")  # a null or stray value must not become the default rho
    return config


def _verify_checksum(path: Path, expected: Optional[str]) -> None:
    """The file must be the one ``save_pretrained`` wrote (folders saved before checksums: not checked)."""
    if expected is None:
        return
    got = file_sha256(path)
    if got != expected:
        raise ValueError(f"{path}: damaged or changed: its SHA-256 is {got[:16]}..., but {CONFIG_NAME} records "
                         f"{str(expected)[:16]}...; save or download it again")


def _load_weights(model: LayerCascade, path: Path, expected_sha256: Optional[str] = None, strict: bool = True) -> None:
    """Load ``path`` into ``model``. ``strict``: every tensor of the model and no other (else an error);
    ``strict=False`` leaves the model's tensors that the file lacks at their initialisation and ignores
    the file's others, with a warning that lists both. A misshapen or non-finite tensor is always an
    error, and the checksum is always verified."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _verify_checksum(path, expected_sha256)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: damaged or not a safetensors file ({e}); delete it and download again") from e
    check_finite(state, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
                 for k in own if k in state and own[k].shape != state[k].shape]
    if misshapen or (strict and (missing or unexpected)):
        raise ValueError(
            f"{path}: weights do not match the model of its config.json: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{'...' if len(unexpected) > 10 else ''}, misshapen {misshapen[:10]}"
            + ("" if misshapen or not strict else " (strict=False loads what matches)")
        )
    if missing or unexpected:
        import warnings

        warnings.warn(f"{path}: strict=False: {len(missing)} tensor(s) of the model not in the file keep their "
                      f"initialisation {missing[:5]}{'...' if len(missing) > 5 else ''}; {len(unexpected)} tensor(s) "
                      f"of the file ignored {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}", stacklevel=3)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False)


# create_model's arguments that from_pretrained's model_kwargs may override (others go to the builder)
TOP_LEVEL_KWARGS = ("num_classes", "head_channels", "class_names", "palette")


def _build(config: dict, config_path: Path, model_kwargs: Optional[dict] = None) -> LayerCascade:
    """The untrained model ``config`` describes: a built-in architecture or a registered builder;
    ``model_kwargs`` override the config's arguments of ``create_model`` and of the builder."""
    name = config["architecture"]
    if name not in list_models():
        raise ValueError(f"{config_path}: unknown architecture {name!r}; a custom model's builder must be "
                         f"registered (import the module that decorates it with @sparsecascade.register_cascade) "
                         f"before from_pretrained; known: {list_models()}")
    given = dict(model_kwargs or {})
    top = dict(num_classes=config["num_classes"], class_names=config.get("class_names"), palette=config.get("palette"))
    top.update({k: given.pop(k) for k in TOP_LEVEL_KWARGS if k in given})
    num_classes = top.pop("num_classes")
    try:
        if is_registered_cascade(name):
            top.pop("head_channels", None)
            return create_model(name, num_classes, rho=config["rho"], **top,
                                **{**config.get("model_kwargs", {}), **given})
        top.setdefault("head_channels", config.get("head_channels", 256))
        return create_model(name, num_classes, rho=config["rho"], **top, **{**config.get("backbone_kwargs", {}), **given})
    except ValueError as e:
        unknown = str(e).split(":", 1)[0]
        if UNKNOWN_ARGUMENT not in str(e) or unknown not in (model_kwargs or {}):
            raise
        raise ValueError(f"{unknown}: not an argument of from_pretrained nor of the {name!r} model it builds "
                         f"(from_pretrained passes extra keyword arguments to create_model({name!r}, ...))") from None


def load_folder(folder: Path, rho: Optional[Rho] = None, device=None, *, strict: bool = True,
                model_kwargs: Optional[dict] = None, hf_hub_id: Optional[str] = None) -> LayerCascade:
    """Build the model of ``folder/config.json`` and load ``folder/model.safetensors`` into it (strictly by default)."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: expected {CONFIG_NAME} and {WEIGHTS_NAME} (from save_pretrained); {p.name} is missing")
    config = _read_config(config_path)
    model = _build(config, config_path, model_kwargs)
    overridden = set(model_kwargs or ())
    model.config.update({k: v for k, v in config.items()
                         if k not in ("backbone_kwargs", "model_kwargs", CHECKSUM_KEY) and k not in overridden})
    if "mean" in config and "std" in config:
        model.mean, model.std = tuple(config["mean"]), tuple(config["std"])
    _load_weights(model, weights_path, config.get(CHECKSUM_KEY), strict=strict)
    if rho is not None:
        model.rho = rho
    with_pretrained_api(model, hf_hub_id)
    model.eval()
    return model.to(device) if device is not None else model


def _hub_folder(repo_id: str, revision: Optional[str], cache_dir, local_files_only: bool, token,
                force_download: bool = False) -> Path:
    """The snapshot folder of ``repo_id`` holding its config, weights and card: one ``snapshot_download``."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = cache_dir or constants.HF_HUB_CACHE
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                        force_download=force_download, token=token, allow_patterns=HUB_FILES,
                                        library_name="sparsecascade"))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id}: {CONFIG_NAME} and {WEIGHTS_NAME} are not in the Hugging Face cache ({where}) and cannot be "
            f"downloaded (offline: HF_HUB_OFFLINE=1, local_files_only=True or no network). Run once with network "
            f"access, or pass the path of a local folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
        ) from e
    except RevisionNotFoundError as e:
        raise ValueError(f"revision: {repo_id} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise ValueError(f"{repo_id}: no such repository on the Hub (or it is private: pass token=...)") from e
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / filename).is_file():
            offline = local_files_only or constants.HF_HUB_OFFLINE
            raise FileNotFoundError(
                f"{repo_id}: {filename} is not in the Hugging Face cache ({where}); run once with network access"
                if offline else f"{repo_id}: the repository has no {filename}; was it written by save_pretrained?")
    return folder


def from_pretrained(name_or_path: Union[str, os.PathLike], *, rho: Optional[Rho] = None,
                    revision: Optional[str] = None, cache_dir=None, local_files_only: bool = False,
                    force_download: bool = False, token: Union[str, bool, None] = None, map_location=None,
                    device=None, strict: bool = True, **model_kwargs) -> LayerCascade:
    """Load an LC model in eval mode from a local folder, a zoo name or a Hub repo id.

    ``rho`` overrides the stored default (a number, or one per stage but the last); ``map_location``
    (or its alias ``device``) moves the model (default: the CPU); ``revision``, ``cache_dir``,
    ``local_files_only``, ``force_download`` and ``token`` go to the Hub download
    (``huggingface_hub.snapshot_download``). A zoo name loads the
    weights shipped with the package, verified by their checksum, unless ``force_download`` or a
    ``revision`` other than the zoo's pinned one asks for the Hub's. ``strict=False`` tolerates tensors
    missing from or unexpected in the file (a warning lists them); shapes and checksums are always checked.
    ``model_kwargs`` override the config's arguments of ``create_model`` and of the model's builder
    (``class_names=...``, a backbone option); an unknown one is an error that names it.
    ``model.pretrained_cfg`` tells the loaded model's preprocessing and classes.
    """
    if rho is not None:
        check_rho(rho)  # before any download; its length is checked against the model it builds
    for arg, value in (("local_files_only", local_files_only), ("force_download", force_download), ("strict", strict)):
        if not isinstance(value, bool):
            raise ValueError(f"{arg}: expected True or False, got {value!r}")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ValueError(f"revision: expected a branch, tag or commit name, got {revision!r}")
    device = _device_arg(map_location, device)
    load = dict(rho=rho, device=device, strict=strict, model_kwargs=model_kwargs)
    hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, force_download=force_download)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_folder(path, **load)
    text = _zoo_name_of_repo_id(text)
    if text in ZOO:
        entry = ZOO[text]
        shipped = SHIPPED_DIR / text
        wants_hub = force_download or (revision is not None and revision != entry.revision)
        if (shipped / WEIGHTS_NAME).is_file() and not wants_hub:
            return load_folder(shipped, **load)
        if not entry.trained:
            raise RuntimeError(f"{text}: {entry.note.format(name=text)}. Trained zoo models: "
                               f"{list_pretrained(trained_only=True) or 'none yet'}")
        folder = _hub_folder(entry.repo_id, revision or entry.revision, **hub)
        return load_folder(folder, **load, hf_hub_id=entry.repo_id)
    if path.exists():
        raise ValueError(f"name_or_path: {text!r} is a file; expected the folder that holds {CONFIG_NAME} and "
                         f"{WEIGHTS_NAME} (from save_pretrained)")
    if looks_like_local_path(text):
        raise FileNotFoundError(f"name_or_path: no such folder {text!r}{_existing_part(path)}; expected a folder "
                                f"written by save_pretrained ({CONFIG_NAME} + {WEIGHTS_NAME}) (not tried on the Hub: "
                                f"it reads as a local path)")
    if text.count("/") == 1:
        folder = _hub_folder(text, revision, **hub)
        return load_folder(folder, **load, hf_hub_id=text)
    raise ValueError(f"name_or_path: {text!r} is neither a folder, a zoo name nor a Hub repo id ('org/name'); "
                     f"the zoo: {list_pretrained()}")


set_pretrained_loader(from_pretrained)  # create_model(<zoo name>, pretrained=True) loads through it


def _device_arg(map_location, device) -> Optional[torch.device]:
    """``map_location`` and its alias ``device`` as one torch.device (None: leave the model on the CPU)."""
    if map_location is not None and device is not None and torch.device(map_location) != torch.device(device):
        raise ValueError(f"map_location: {map_location!r} and device={device!r} disagree; give one of them")
    value = map_location if map_location is not None else device
    if value is None:
        return None
    arg = "map_location" if map_location is not None else "device"
    try:
        target = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{arg}: expected a device such as 'cpu' or 'cuda:0', got {value!r}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{arg}: {value!r}, but CUDA is not available (torch {torch.__version__}); use 'cpu'")
    return target


def _zoo_name_of_repo_id(text: str) -> str:
    """A zoo model's Hub repo id (``sparsecascade/lc-resnet18-camvid``) as its zoo name: the shipped
    weights load offline, and a local folder named like the organisation never shadows it."""
    return next((name for name, entry in ZOO.items() if entry.repo_id == text), text)


def looks_like_local_path(text: str) -> bool:
    """True for what can only mean a local folder: ``./x``, ``../x``, ``/x``, ``~/x``, a Windows
    separator, two or more ``/`` (a Hub id has one), or ``a/b`` where the folder ``a`` exists here."""
    if text.startswith((".", "/", "~")) or "\\" in text or (os.sep != "/" and os.sep in text):
        return True
    if text.count("/") > 1:
        return True
    return text.count("/") == 1 and Path(text.split("/")[0]).is_dir()


def _existing_part(path: Path) -> str:
    """Where the path stops existing: ``runs/my-modle`` -> " (runs/ exists, but holds no 'my-modle')"."""
    path = path.expanduser()
    parent = next((p for p in path.parents if p.is_dir() and str(p) != "."), None)
    if parent is None:
        return ""
    missing = path.relative_to(parent).parts[0]
    return f" ({parent}{os.sep} exists, but holds no {missing!r})"
