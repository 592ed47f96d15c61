"""Save, load and publish LC models: ``config.json`` + ``model.safetensors`` + a model card.

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

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ._atomic import atomic_write, atomic_write_text
from .cascade import LayerCascade
from .factory import (UNKNOWN_ARGUMENT, attach_pretrained_cfg, create_model, is_registered_cascade, list_models,
                      set_pretrained_loader)
from .zoo import ZOO, list_pretrained

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CONFIG_KEYS = ("architecture", "num_classes", "rho")
CHECKSUM_KEY = "weights_sha256"  # in config.json: the SHA-256 of model.safetensors
SHIPPED_DIR = Path(__file__).parent / "weights"  # package data: zoo weights that work offline
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]  # what from_pretrained takes from a Hub repository
DEFAULT_LICENSE = "apache-2.0"  # the card's licence when the config records none (config "license")
DATASET_NAMES = {"camvid": "CamVid", "cityscapes": "Cityscapes", "voc": "PASCAL VOC 2012", "voc2012": "PASCAL VOC 2012"}
# the measured results that go into the card's model-index: key -> (metric type, metric name)
MODEL_INDEX_METRICS = {"miou": ("mean_iou", "mIoU"), "pixel_accuracy": ("pixel_accuracy", "pixel accuracy"),
                       "mac_ratio": ("mac_ratio", "executed share of the dense MACs"),
                       "ms_per_image": ("ms_per_image", "ms per image")}


def model_config(model: LayerCascade) -> dict:
    """What ``config.json`` records: how to rebuild the model (``create_model`` name and arguments)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_KEYS):
        raise ValueError(
            "model: save_pretrained cannot record how to rebuild this LayerCascade (built directly, not by "
            "sparsecascade.create_model); register its builder with @sparsecascade.register_cascade and build it "
            "with sparsecascade.create_model(name, num_classes, ...), or save model.state_dict() with safetensors"
        )
    config = {k: v for k, v in config.items() if k != CHECKSUM_KEY}
    try:
        json.dumps(config)
    except TypeError as e:
        raise ValueError(f"model.config: save_pretrained writes it as JSON, but it holds a value JSON cannot "
                         f"hold ({e}); build the model with numbers, strings, lists and dicts as arguments") from None
    return {**config, "rho": model.rho}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(model: LayerCascade, folder: Union[str, os.PathLike], *, dtype: Optional[torch.dtype] = None,
                    results: Optional[dict] = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (``dtype``: e.g. torch.float16 to halve it) and a model card.

    ``results``: measured numbers (e.g. ``{"mIoU": 0.61, ...}``) for the card; without them the card says
    that nothing was measured. Re-saving the same model writes identical files.
    """
    from safetensors.torch import save

    folder = Path(folder)
    config = model_config(model)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    _check_finite(state, "model" if dtype is None else f"model (cast to {dtype})")
    data = save(state, metadata={"format": "pt"})
    atomic_write(folder / WEIGHTS_NAME, lambda f: f.write(data))
    config[CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / CARD_NAME, model_card(config, results))
    return folder


def model_card(config: dict, results: Optional[dict] = None) -> str:
    """A Hugging Face model card that states only what was measured.

    Its metadata (``huggingface_hub.ModelCardData``): the licence (config ``license``, else
    ``DEFAULT_LICENSE``), the data set, and, when ``results`` holds measured numbers and the config names
    the data set, a ``model-index`` with them (``eval_results``: mIoU, pixel accuracy, the MAC share,
    ms per image, at the measured rho), which the Hub shows as the model's evaluation results.
    """
    from huggingface_hub import ModelCardData

    name = config.get("name") or config["architecture"]
    source = config.get("name") or "<this folder or its Hub repo id>"
    eval_results = _eval_results(name, config, results or {})
    data = ModelCardData(
        library_name="sparsecascade", pipeline_tag="image-segmentation",
        license=config.get("license") or DEFAULT_LICENSE,
        tags=["semantic-segmentation", "deep-layer-cascade", config["architecture"]],
        datasets=[config["dataset"]] if config.get("dataset") else None,
        model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    lines = [
        "---", data.to_yaml(), "---", "", f"# {name}", "",
        f"Deep Layer Cascade (Li et al., CVPR 2017) on `{config['architecture']}`: "
        f"{config['num_classes']} classes, default rho = {config['rho']}.", "",
        "```python", "import sparsecascade", f"model = sparsecascade.from_pretrained({source!r})",
        "result = model.segment(\"image.png\")", "```", "",
    ]
    if config.get("class_names"):
        lines += ["Classes: " + ", ".join(config["class_names"]), ""]
    if config.get("shortest_edge"):
        lines += [f"`segment()` resizes an image so that its shorter side has {config['shortest_edge']} pixels "
                  "(the scale the model was trained at) and returns labels at the image's own size.", ""]
    if results:
        lines += ["## Measured results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_card_value(k, v)} |" for k, v in results.items()]
        if results.get("command"):
            lines += ["", f"Measured with `{results['command']}`."]
        if config.get("name"):
            lines += ["", f"Every table, with the command that measured it: `zoo/{config['name']}/results.md` "
                      "in the sparsecascade repository."]
    else:
        lines += ["## Results", "", "No results have been measured for these weights."]
    lines += ["", "## Licence", "", f"{data.license}."]
    return "\n".join(lines) + "\n"


def _eval_results(name: str, config: dict, results: dict) -> list:
    """The ``model-index`` entries of the measured ``results`` (numbers as measured; rho as an argument)."""
    from huggingface_hub import EvalResult

    dataset = config.get("dataset")
    if not dataset:
        return []
    args = {"rho": results["rho"]} if isinstance(results.get("rho"), (int, float)) else None
    return [EvalResult(task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=dataset,
                       dataset_name=DATASET_NAMES.get(dataset, dataset), dataset_split=results.get("split"),
                       metric_type=metric, metric_name=metric_name, metric_value=results[key], metric_args=args)
            for key, (metric, metric_name) in MODEL_INDEX_METRICS.items()
            if isinstance(results.get(key), (int, float)) and not isinstance(results.get(key), bool)
            and results[key] == results[key]]  # NaN (nothing to measure) is left out


def _card_value(key: str, value) -> str:
    """Shares as percentages, times in ms with one decimal, the rest as they are."""
    if key in ("miou", "pixel_accuracy", "mac_ratio") and isinstance(value, float):
        return f"{100 * value:.1f}%"
    if key == "stop_fractions" and isinstance(value, list):
        return " / ".join(f"{100 * v:.1f}%" for v in value) + " (stages 1 / 2 / ...)"
    if key == "ms_per_image" and isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from e
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path}: config lacks {missing}; expected the keys written by save_pretrained")
    return config


def _check_finite(state: dict, where) -> None:
    """Refuse NaN or infinite weights: they would run, and give wrong labels without a word."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where}: non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                         f"{bad[:5]}{'...' if len(bad) > 5 else ''}; these weights are unusable")


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
    _check_finite(state, path)
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


def load_folder(folder: Path, rho: Optional[float] = None, device=None, *, strict: bool = True,
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
    attach_pretrained_cfg(model, hf_hub_id)
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


def from_pretrained(name_or_path: Union[str, os.PathLike], *, rho: Optional[float] = None,
                    revision: Optional[str] = None, cache_dir=None, local_files_only: bool = False,
                    force_download: bool = False, token: Union[str, bool, None] = None, map_location=None,
                    device=None, strict: bool = True, **model_kwargs) -> LayerCascade:
    """Load an LC model in eval mode from a local folder, a zoo name or a Hub repo id.

    ``rho`` overrides the stored default; ``map_location`` (or its alias ``device``) moves the model
    (default: the CPU); ``revision``, ``cache_dir``, ``local_files_only``, ``force_download`` and
    ``token`` go to the Hub download (``huggingface_hub.snapshot_download``). A zoo name loads the
    weights shipped with the package, verified by their checksum, unless ``force_download`` or a
    ``revision`` other than the zoo's pinned one asks for the Hub's. ``strict=False`` tolerates tensors
    missing from or unexpected in the file (a warning lists them); shapes and checksums are always checked.
    ``model_kwargs`` override the config's arguments of ``create_model`` and of the model's builder
    (``class_names=...``, a backbone option); an unknown one is an error that names it.
    ``model.pretrained_cfg`` tells the loaded model's preprocessing and classes.
    """
    if rho is not None:
        _check_rho(rho)
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


def _check_rho(rho) -> None:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a number in [0, 1], got {rho!r}")


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


def push_to_hub(model: LayerCascade, repo_id: str, *, revision: Optional[str] = None, create_pr: bool = False,
                commit_message: Optional[str] = None, private: bool = False, token=None,
                dtype: Optional[torch.dtype] = None, results: Optional[dict] = None) -> Any:
    """save_pretrained into a temporary folder, then create the repo (if needed) and upload the folder.

    ``revision``: the branch to commit to (created from the default branch if it does not exist);
    ``create_pr``: open a pull request with the commit instead of committing to the branch;
    ``commit_message`` (default "Upload sparsecascade model"); ``private``: a new repository is private;
    ``token``: the Hub token (default: the logged-in one). Returns the ``CommitInfo`` (its ``pr_url``
    with ``create_pr``).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id.strip("/") or repo_id.count("/") > 1 or " " in repo_id:
        raise ValueError(f"repo_id: expected 'name' or 'org/name', got {repo_id!r}")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ValueError(f"revision: expected a branch name, got {revision!r}")
    for arg, value in (("create_pr", create_pr), ("private", private)):
        if not isinstance(value, bool):
            raise ValueError(f"{arg}: expected True or False, got {value!r}")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise ValueError(f"commit_message: expected a non-empty string, got {commit_message!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, dtype=dtype, results=results)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp,
                                 commit_message=commit_message or "Upload sparsecascade model",
                                 revision=revision, create_pr=create_pr)
