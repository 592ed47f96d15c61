"""Checkpoints: atomic saves, the RNG states, loading (a checkpoint, a trained model), and saving and
restoring a run (with its log cut back to the checkpoint's step)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._atomic import atomic_write, atomic_write_text
from ..cascade import LayerCascade
from .builders import build_model
from .config import TrainConfig, eval_rho

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 1


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through ``atomic_write``: a run resumed after a kill finds the old checkpoint or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise ValueError(f"checkpoint: {path} is not a sparsecascade training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def load_trained_model(path, device="cpu") -> tuple[LayerCascade, TrainConfig]:
    """The model of a training checkpoint, in eval mode at its mode's evaluation rho."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.backbone_weights = None  # the checkpoint holds every weight
    model = build_model(cfg, state["num_classes"])
    model.load_state_dict(state["model"])
    model.rho = eval_rho(cfg)
    return model.to(device).eval(), cfg


def _truncate_log(path: Path, step: int) -> None:
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


def _save(path, cfg, ctx, model, optimizer, scheduler, scaler, step, state) -> None:
    rng = rng_state()
    rngs = [rng]
    if ctx.world_size > 1:  # every process's RNG state (a collective: every rank calls it)
        rngs = [None] * ctx.world_size
        dist.all_gather_object(rngs, rng)
    if not ctx.is_main:
        return
    atomic_save(dict(
        format=CHECKPOINT_FORMAT, step=step, epoch=step // state["spe"], batch_in_epoch=step % state["spe"],
        config=cfg.to_dict(), num_classes=state["num_classes"], world_size=ctx.world_size,
        model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(), rng=rngs,
    ), path)


def _restore(path, cfg, ctx, model, optimizer, scheduler, scaler, spe) -> int:
    state = load_checkpoint(path)
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
