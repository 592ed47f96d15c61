"""Save, load and publish LC models: ``config.json`` + ``model.safetensors`` + a model card.

``from_pretrained`` resolves a local folder, then a zoo name (weights shipped with the package,
else its Hub repository), then a Hub repo id; Hub files come from the Hugging Face cache or are
downloaded, honouring ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``HF_HOME`` and ``local_files_only``.
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
from .factory import create_model, is_registered_cascade, list_models
from .zoo import ZOO, list_pretrained

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CONFIG_KEYS = ("architecture", "num_classes", "rho")
CHECKSUM_KEY = "weights_sha256"  # in config.json: the SHA-256 of model.safetensors
SHIPPED_DIR = Path(__file__).parent / "weights"  # package data: zoo weights that work offline


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
    """A Hugging Face model card that states only what was measured."""
    name = config.get("name") or config["architecture"]
    source = config.get("name") or "<this folder or its Hub repo id>"
    lines = [
        "---", "library_name: sparsecascade", "pipeline_tag: image-segmentation",
        "tags:", "- semantic-segmentation", "- deep-layer-cascade", f"- {config['architecture']}",
        *(["datasets:", f"- {config['dataset']}"] if config.get("dataset") else []),
        "---", "", f"# {name}", "",
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
    return "\n".join(lines) + "\n"


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


def _load_weights(model: LayerCascade, path: Path, expected_sha256: Optional[str] = None) -> None:
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
    if missing or unexpected or misshapen:
        raise ValueError(
            f"{path}: weights do not match the model of its config.json: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{'...' if len(unexpected) > 10 else ''}, misshapen {misshapen[:10]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _build(config: dict, config_path: Path) -> LayerCascade:
    """The untrained model ``config`` describes: a built-in architecture or a registered builder."""
    name = config["architecture"]
    if name not in list_models():
        raise ValueError(f"{config_path}: unknown architecture {name!r}; a custom model's builder must be "
                         f"registered (import the module that decorates it with @sparsecascade.register_cascade) "
                         f"before from_pretrained; known: {list_models()}")
    if is_registered_cascade(name):
        return create_model(name, config["num_classes"], rho=config["rho"], **config.get("model_kwargs", {}))
    return create_model(name, config["num_classes"], rho=config["rho"],
                        head_channels=config.get("head_channels", 256), **config.get("backbone_kwargs", {}))


def load_folder(folder: Path, rho: Optional[float] = None, device=None) -> LayerCascade:
    """Build the model of ``folder/config.json`` and load ``folder/model.safetensors`` into it, strictly."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: expected {CONFIG_NAME} and {WEIGHTS_NAME} (from save_pretrained); {p.name} is missing")
    config = _read_config(config_path)
    model = _build(config, config_path)
    model.config.update({k: v for k, v in config.items() if k not in ("backbone_kwargs", "model_kwargs", CHECKSUM_KEY)})
    if "mean" in config and "std" in config:
        model.mean, model.std = tuple(config["mean"]), tuple(config["std"])
    _load_weights(model, weights_path, config.get(CHECKSUM_KEY))
    if rho is not None:
        model.rho = rho
    model.eval()
    return model.to(device) if device is not None else model


def _hub_folder(repo_id: str, revision: Optional[str], cache_dir, local_files_only: bool, token) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                              local_files_only=local_files_only, token=token)))
        except LocalEntryNotFoundError as e:
            where = cache_dir or constants.HF_HUB_CACHE
            raise FileNotFoundError(
                f"{repo_id}: {filename} is not in the Hugging Face cache ({where}) and it cannot be downloaded "
                f"(offline: HF_HUB_OFFLINE=1, local_files_only=True or no network). Run once with network "
                f"access, or pass the path of a local folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
            ) from e
        except RepositoryNotFoundError as e:
            raise ValueError(f"{repo_id}: no such repository on the Hub (or it is private: pass token=...)") from e
        except EntryNotFoundError as e:
            raise FileNotFoundError(f"{repo_id}: the repository has no {filename}; was it written by save_pretrained?") from e
    if paths[0].parent != paths[1].parent:
        raise RuntimeError(f"{repo_id}: config and weights resolved to different snapshots")
    return paths[0].parent


def from_pretrained(name_or_path: Union[str, os.PathLike], rho: Optional[float] = None, device=None,
                    revision: Optional[str] = None, *, cache_dir=None, local_files_only: Optional[bool] = None,
                    token: Union[str, bool, None] = None) -> LayerCascade:
    """Load an LC model in eval mode from a local folder, a zoo name or a Hub repo id.

    ``rho`` overrides the stored default; ``device`` moves the model; ``revision``, ``cache_dir``,
    ``local_files_only`` and ``token`` go to every Hub download.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_folder(path, rho, device)
    if revision is None:
        text = _zoo_name_of_repo_id(text)
    if text in ZOO:
        entry = ZOO[text]
        shipped = SHIPPED_DIR / text
        if (shipped / WEIGHTS_NAME).is_file():
            return load_folder(shipped, rho, device)
        if not entry.trained:
            raise RuntimeError(f"{text}: {entry.note.format(name=text)}. Trained zoo models: "
                               f"{list_pretrained(trained_only=True) or 'none yet'}")
        folder = _hub_folder(entry.repo_id, revision or entry.revision, cache_dir, bool(local_files_only), token)
        return load_folder(folder, rho, device)
    if path.exists():
        raise ValueError(f"name_or_path: {text!r} is a file; expected the folder that holds {CONFIG_NAME} and "
                         f"{WEIGHTS_NAME} (from save_pretrained)")
    if looks_like_local_path(text):
        raise FileNotFoundError(f"name_or_path: no such folder {text!r}{_existing_part(path)}; expected a folder "
                                f"written by save_pretrained ({CONFIG_NAME} + {WEIGHTS_NAME}) (not tried on the Hub: "
                                f"it reads as a local path)")
    if text.count("/") == 1:
        folder = _hub_folder(text, revision, cache_dir, bool(local_files_only), token)
        return load_folder(folder, rho, device)
    raise ValueError(f"name_or_path: {text!r} is neither a folder, a zoo name nor a Hub repo id ('org/name'); "
                     f"the zoo: {list_pretrained()}")


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


def push_to_hub(model: LayerCascade, repo_id: str, *, token=None, private: bool = False,
                commit_message: str = "Upload sparsecascade model", dtype: Optional[torch.dtype] = None,
                results: Optional[dict] = None) -> Any:
    """save_pretrained into a temporary folder, then create the repo (if needed) and upload the folder."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, dtype=dtype, results=results)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
