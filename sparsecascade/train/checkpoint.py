"""Checkpoints: atomic saves with a checksum, the previous checkpoint kept beside the latest, the
RNG states, loading (a checkpoint, a trained model), and saving and restoring a run (with its log
cut back to the checkpoint's step).

A run's folder holds ``last.pt`` and ``previous.pt`` (the one before it). Each checkpoint carries
the SHA-256 of its content (``sha256``), so a damaged file (flipped bytes, a cut copy, an empty
file) is recognised when it is loaded; a resume then falls back to ``previous.pt`` with a one-line
warning, or refuses when neither is intact: a run never continues from garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .._atomic import atomic_write, atomic_write_text
from ..cascade import LayerCascade
from .builders import build_model
from .config import TrainConfig, eval_rho

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 2  # 2: with the content's checksum; format 1 (no checksum) still loads
DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, truncated, not weights-only, or foreign."""


class ResumeWarning(UserWarning):
    """A resume that had to fall back to the previous checkpoint."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through ``atomic_write``: a run resumed after a kill finds the old checkpoint or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def state_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content (tensors' dtype, shape and bytes; every other value's repr),
    in a fixed order: equal for the object saved and the object loaded back, whatever the file layout."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)};".encode())
        for key in sorted(obj, key=repr):
            digest.update(f"{key!r}:".encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__} {len(obj)};".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"{obj!r};".encode())


def save_checkpoint(state: dict, path: Path, keep_previous: bool) -> None:
    """Write ``state`` with its checksum to ``path``; with ``keep_previous``, the file there becomes
    ``previous.pt`` first (only pass it when that file is known intact: written or verified by this run).

    At every moment ``path`` holds the old checkpoint or the new one, so a kill never leaves it missing."""
    state = {**state, DIGEST_KEY: state_digest(state)}
    if keep_previous and path.is_file():
        _link_as_previous(path)
    atomic_save(state, path)


def _link_as_previous(path: Path) -> None:
    """``previous.pt`` := the file at ``path``, atomically: a hard link (a copy where the file system has
    none) renamed into place; the atomic save that follows replaces ``path`` and leaves this one alone."""
    previous = path.with_name(PREVIOUS_NAME)
    tmp = previous.with_name(f".{previous.name}.link.tmp")  # a name remove_stale_temp_files(previous) clears
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, previous)


def rng_state() -> dict:
    """This process's RNG states in types that ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                python=[version, list(internal), gauss_next])


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def load_checkpoint(path, map_location="cpu") -> dict:
    """A training checkpoint, verified: raises a one-line ``CheckpointError`` unless it is intact."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") not in (1, CHECKPOINT_FORMAT) or "model" not in state:
        raise CheckpointError(f"checkpoint: {path} is not a sparsecascade training checkpoint (format {CHECKPOINT_FORMAT})")
    recorded = state.pop(DIGEST_KEY, None)
    if state["format"] >= 2 and recorded != state_digest(state):
        raise CheckpointError(f"checkpoint: {path} is damaged (its content does not match its checksum)")
    return state


def _torch_load(path: Path, map_location) -> Any:
    """torch.load of tensors and plain containers only; its errors as one line of our own (never torch's
    advice to retry with weights_only=False: that would run whatever code the file holds)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function to import (garbage: "unsupported operand")
            raise CheckpointError(f"checkpoint: {path} holds pickled Python objects, not only tensors; sparsecascade "
                                  f"loads weights-only checkpoints (loading objects could run code from the file)") from None
        raise CheckpointError(f"checkpoint: {path} is damaged or not a torch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(f"checkpoint: {path} is damaged, truncated or not a torch checkpoint "
                              f"({type(e).__name__}: {_first_line(e)})") from None


def _first_line(error: BaseException, limit: int = 120) -> str:
    """The first sentence of an error's message, at most ``limit`` characters."""
    text = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return text if len(text) <= limit else text[:limit] + "..."


def load_latest_intact(out_dir: Path) -> tuple[Optional[Path], Optional[dict]]:
    """The newest intact checkpoint of a run folder: ``last.pt``, else ``previous.pt`` with a
    ``ResumeWarning``; (None, None) when the folder holds neither; a ``CheckpointError`` naming both
    when neither is intact."""
    last, previous = out_dir / CHECKPOINT_NAME, out_dir / PREVIOUS_NAME
    problems = []
    for path in (last, previous):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e).removeprefix("checkpoint: "))
            continue
        if path == previous:
            why = problems[0] if problems else f"{last} is missing"
            warnings.warn(f"resume: {why}; resuming from {previous} (step {state['step']})", ResumeWarning,
                          stacklevel=2)
        return path, state
    if problems:
        raise CheckpointError(f"resume: no intact checkpoint in {out_dir}: {'; '.join(problems)}; "
                              f"start again with overwrite (--overwrite)")
    return None, None


def load_trained_model(path, device="cpu") -> tuple[LayerCascade, TrainConfig]:
    """The model of a training checkpoint, in eval mode at its mode's evaluation rho."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.backbone_weights = None  # the checkpoint holds every weight
    model = build_model(cfg, state["num_classes"])
    model.load_state_dict(state["model"])
    model.rho = eval_rho(cfg)
    return model.to(device).eval(), cfg


def load_init_weights(model: LayerCascade, path) -> None:
    """Every weight of ``model`` from ``path``: a training checkpoint (verified) or a safetensors file
    of a LayerCascade state dict; a one-line ``ValueError`` naming ``init_weights`` when they do not fit."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"init_weights: {path} does not exist")
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        weights = load_checkpoint(path)["model"]
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
    misshapen = sorted(k for k in set(mine) & set(weights) if mine[k].shape != weights[k].shape)
    if missing or unexpected or misshapen:
        raise ValueError(f"init_weights: {path} does not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, other shapes {misshapen[:3]}, {len(missing + unexpected + misshapen)} "
                         f"in all); expected the weights of the same architecture and number of classes")
    model.load_state_dict({k: v.to(mine[k].dtype) for k, v in weights.items()})


def truncate_log_after(path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint (the resumed run rewrites them),
    and a line it was killed in the middle of."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            pass
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def save_training_state(path, cfg, ctx, model, optimizer, scheduler, scaler, step, state, keep_previous: bool) -> None:
    """Write the run's checkpoint (model, optimizer, scheduler, scaler, every process's RNG) at ``step``;
    a collective when several processes run (each gathers its RNG state), written by the main one."""
    rng = rng_state()
    rngs = [rng]
    if ctx.world_size > 1:  # every process's RNG state (a collective: every rank calls it)
        rngs = [None] * ctx.world_size
        dist.all_gather_object(rngs, rng)
    if not ctx.is_main:
        return
    save_checkpoint(dict(
        format=CHECKPOINT_FORMAT, step=step, epoch=step // state["spe"], batch_in_epoch=step % state["spe"],
        config=cfg.to_dict(), num_classes=state["num_classes"], world_size=ctx.world_size,
        model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(), rng=rngs,
    ), path, keep_previous)


def restore_training_state(path, state, cfg, ctx, model, optimizer, scheduler, scaler, spe) -> int:
    """Load a verified checkpoint ``state`` (from ``path``) into the run; returns its step."""
    saved = TrainConfig.from_dict(state["config"]).identity()
    diff = {k: (saved[k], v) for k, v in cfg.identity().items() if saved.get(k) != v}
    if diff:
        raise ValueError(f"resume: {path} was written by a run with other settings "
                         f"(field: (checkpoint, now)) {diff}; use another out_dir or the same settings")
    # Another number of processes may resume: the global batches are the same (DistributedSampler
    # deals each batch's samples round-robin), only the per-process RNG states are rank 0's.
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
    step = int(state["step"])
    if (step // spe, step % spe) != (state["epoch"], state["batch_in_epoch"]):
        raise ValueError(f"resume: {path} stopped at epoch {state['epoch']} batch {state['batch_in_epoch']}, "
                         f"which does not match {spe} steps per epoch now (did the data set change?)")
    return step
