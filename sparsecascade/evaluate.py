"""Evaluation of an LC model: mIoU, where pixels stop, time per image; rho sweeps and rho calibration.

    result = evaluate(model, val_data, rho=0.985)       # EvalResult
    results = rho_sweep(model, val_data, rhos, out_dir)  # + rho_sweep.csv / .json / .png
    cal = calibrate_rho(model, val_data, budget=0.6)     # best mIoU within 60% of the dense MACs

``val_data`` is a data set yielding ``(image (3, H, W) float, label (H, W) int64)`` (a
``sparsecascade.data`` data set with ``eval_transform``) or an iterable of such batches. The
prediction is compared at the label's resolution (the probabilities upsampled bilinearly when the image was
resized). ``ms_per_image`` times the model's forward alone (after one untimed warm-up pass,
synchronised on CUDA); ``mac_ratio`` is the executed share of the dense network's MACs.
The result record (``EvalResult``) and its writers (table, CSV, JSON, plot) are in :mod:`sparsecascade.eval_report`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .cascade import LayerCascade
from .eval_report import EvalResult, format_table, plot_sweep, save_sweep  # noqa: F401  (also named here)
from .metrics import ConfusionMatrix, StageDistribution
from .rho import Rho, check_rho, format_rho

DEFAULT_RHOS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.985, 0.995, 1.0)
BUDGET_KINDS = ("macs", "ms")


def _batches(data, batch_size: int, workers: int) -> Iterable:
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    return data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate(model: LayerCascade, data, *, rho: Optional[Rho] = None, device=None,
             class_names: Optional[Sequence[str]] = None, ignore_index: int = 255,
             max_images: Optional[int] = None, batch_size: int = 1, workers: int = 0,
             progress: bool = False, head: Optional[int] = None) -> EvalResult:
    """Evaluate ``model`` on ``data`` at ``rho`` (default: the model's own); the model's rho is restored.

    ``head=k`` (1-based) scores stage k's head alone: every pixel stops at stage k (the stages
    before it run on every pixel, none after it), whatever ``rho``; ``rho`` is then reported as 1.
    """
    if not isinstance(model, LayerCascade):
        raise TypeError(f"model: expected a LayerCascade, got {type(model).__name__}")
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not 1 <= head <= model.num_stages):
        raise ValueError(f"head: expected a stage number in [1, {model.num_stages}], got {head!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    class_names = list(class_names if class_names is not None else getattr(data, "class_names", []))
    saved_rho, was_training = model.rho, model.training
    model.eval()
    if rho is not None:
        model.rho = rho
    saved_stop_rule = model.stop_rule
    if head is not None:  # every pixel stops at stage ``head``: the stages before it stop none
        model.rho = 1.0
        if head < model.num_stages:
            model.stop_rule = _stop_every_pixel_at(head - 1)
    try:
        cm = stages = None
        seconds, macs, dense, images = 0.0, 0, 0, 0
        batches = _batches(data, batch_size, workers)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"eval rho={format_rho(model.rho)}", dynamic_ncols=True)
        for x, target in batches:
            if max_images is not None and images >= max_images:
                break
            if max_images is not None and images + x.shape[0] > max_images:  # the last batch, cut to the limit
                x, target = x[: max_images - images], target[: max_images - images]
            x, target = x.to(device), target.to(device)
            if images == 0:
                model(x)  # warm-up: first-call allocations and kernel selection stay out of the timing
            _sync(device)
            t0 = time.perf_counter()
            out = model(x)
            _sync(device)
            seconds += time.perf_counter() - t0
            probs = out.probs
            if tuple(probs.shape[-2:]) != tuple(target.shape[-2:]):
                probs = F.interpolate(probs, size=target.shape[-2:], mode="bilinear", align_corners=False)
            if cm is None:
                cm = ConfusionMatrix(probs.shape[1], ignore_index)
                stages = StageDistribution(probs.shape[1], model.num_stages, ignore_index)
            cm.update(probs.argmax(1).cpu(), target.cpu())
            stages.update(out.stage_map, target)
            macs, dense, images = macs + out.macs, dense + out.dense_macs, images + x.shape[0]
        if cm is None:
            raise ValueError("data: expected at least one (image, label) batch, got none")
        return EvalResult(
            rho=model.rho, miou=cm.miou(), pixel_accuracy=cm.pixel_accuracy(), iou=cm.iou().tolist(),
            stop_fractions=stages.stop_fractions(), stage_distribution=stages.fractions().tolist(),
            ms_per_image=1e3 * seconds / images, mac_ratio=macs / dense if dense else 1.0,
            num_images=images, class_names=class_names)
    finally:
        model.rho = saved_rho
        model.train(was_training)
        model.stop_rule = saved_stop_rule


def _stop_every_pixel_at(stage: int):
    """A ``LayerCascade.stop_rule``: every pixel still active stops at ``stage`` (0-based), none before it."""
    def stop_rule(logits: torch.Tensor, active: torch.Tensor, k: int) -> torch.Tensor:
        return active if k == stage else torch.zeros_like(active)

    return stop_rule


def rho_sweep(model: LayerCascade, data, rhos: Sequence[Rho] = DEFAULT_RHOS, out_dir=None,
              **eval_kwargs) -> list[EvalResult]:
    """``evaluate`` at each rho; with ``out_dir``, writes ``rho_sweep.csv``, ``rho_sweep.json`` (every
    result, per class included) and ``rho_sweep.png`` (mIoU and ms/image against rho). A candidate may
    be per stage (``(0.9, 0.5)``): the numbers come first, ascending, then the per-stage ones in order."""
    candidates = list(rhos) if hasattr(rhos, "__iter__") and not isinstance(rhos, (str, bytes)) else []
    if not candidates:
        raise ValueError(f"rhos: expected a non-empty sequence of rho values, got {rhos!r}")
    checked = [check_rho(r, model.num_stages, name="rhos") for r in candidates]
    checked = sorted(r for r in checked if isinstance(r, float)) + [r for r in checked if isinstance(r, tuple)]
    results = [evaluate(model, data, rho=r, **eval_kwargs) for r in checked]
    if out_dir is not None:
        save_sweep(results, out_dir)
    return results


@dataclass
class Calibration:
    rho: Rho  # the chosen threshold (set it with ``model.rho = calibration.rho``)
    result: EvalResult  # its evaluation
    curve: list  # EvalResult per candidate rho, in rho_sweep's order
    budget: float
    budget_kind: str


def calibrate_rho(model: LayerCascade, val_data, budget: float, budget_kind: str = "macs",
                  rhos: Sequence[Rho] = DEFAULT_RHOS, **eval_kwargs) -> Calibration:
    """The rho with the best validation mIoU whose measured cost fits ``budget``.

    ``budget_kind="macs"``: the executed share of the dense network's MACs (e.g. 0.6);
    ``"ms"``: milliseconds per image on this machine. Ties in mIoU go to the cheaper rho. The
    model's rho is left as it was; the whole curve is returned.
    """
    if budget_kind not in BUDGET_KINDS:
        raise ValueError(f"budget_kind: expected one of {BUDGET_KINDS}, got {budget_kind!r}")
    if not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"budget: expected a positive number, got {budget!r}")
    curve = rho_sweep(model, val_data, rhos, **eval_kwargs)
    fitting = [r for r in curve if r.cost(budget_kind) <= budget]
    if not fitting:
        cheapest = min(curve, key=lambda r: r.cost(budget_kind))
        tried = ", ".join(format_rho(r.rho) for r in curve)
        raise ValueError(f"budget: no rho in [{tried}] fits {budget_kind} <= {budget}; the cheapest, "
                         f"rho={format_rho(cheapest.rho)}, costs {cheapest.cost(budget_kind):.4g}")
    best = max(fitting, key=lambda r: (r.miou, -r.cost(budget_kind)))
    return Calibration(best.rho, best, curve, float(budget), budget_kind)
