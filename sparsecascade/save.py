"""Write an LC model as ``config.json`` + ``model.safetensors`` + a Hugging Face model card, and push
that folder to the Hub. Imports no model code: a model is anything with ``config``, ``rho`` and a
state dict (``sparsecascade.create_model`` records ``config``); loading is :mod:`sparsecascade.hub`'s.

``save_pretrained`` records the SHA-256 of ``model.safetensors`` in ``config.json`` (``weights_sha256``),
which every load checks; non-finite weights are refused on saving and on loading (``check_finite``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ._atomic import atomic_write, atomic_write_text
from .rho import format_rho

__all__ = ["save_pretrained", "push_to_hub", "model_card", "model_config", "file_sha256", "check_finite"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CONFIG_KEYS = ("architecture", "num_classes", "rho")
CHECKSUM_KEY = "weights_sha256"  # in config.json: the SHA-256 of model.safetensors
DEFAULT_LICENSE = "apache-2.0"  # the card's licence when the config records none (config "license")
DATASET_NAMES = {"camvid": "CamVid", "cityscapes": "Cityscapes", "voc": "PASCAL VOC 2012", "voc2012": "PASCAL VOC 2012"}
# the measured results that go into the card's model-index: key -> (metric type, metric name)
MODEL_INDEX_METRICS = {"miou": ("mean_iou", "mIoU"), "pixel_accuracy": ("pixel_accuracy", "pixel accuracy"),
                       "mac_ratio": ("mac_ratio", "executed share of the dense MACs"),
                       "ms_per_image": ("ms_per_image", "ms per image")}


def model_config(model: nn.Module) -> dict:
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
    return {**config, "rho": model.rho}  # a per-stage rho (a tuple) is written as a JSON list


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(model: nn.Module, folder: Union[str, os.PathLike], *, dtype: Optional[torch.dtype] = None,
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
    check_finite(state, "model" if dtype is None else f"model (cast to {dtype})")
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
        f"{config['num_classes']} classes, default rho = {format_rho(config['rho'])}.", "",
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
    args = {"rho": results["rho"]} if isinstance(results.get("rho"), (int, float, list, tuple)) else None
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
    if key == "rho" and isinstance(value, (list, tuple)):
        return format_rho(value)
    return str(value)


def check_finite(state: dict, where) -> None:
    """Refuse NaN or infinite weights: they would run, and give wrong labels without a word."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where}: non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                         f"{bad[:5]}{'...' if len(bad) > 5 else ''}; these weights are unusable")


def push_to_hub(model: nn.Module, repo_id: str, *, revision: Optional[str] = None, create_pr: bool = False,
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
