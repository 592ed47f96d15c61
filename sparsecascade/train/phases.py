"""Training phases: stretches of steps with one loss, one rho and one set of trainable parts (LC's
DSN and cascade steps, the model cascade's stages), the poly learning rate restarted per phase."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .. import losses
from ..cascade import CascadeTrainOutput, LayerCascade
from ..data import IGNORE_INDEX
from .config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """A stretch of steps with one loss, one rho and one set of trainable stages and heads."""

    name: str  # "plain", "dsn", "dsn_dropout", "cascade", or "stage<k>" (model cascade, 1-based)
    start: int
    end: int
    rho: float
    stages: Optional[tuple[int, ...]] = None  # 0-based stages that train (None: all)
    heads: Optional[tuple[int, ...]] = None  # 0-based heads that train (None: all)


def plan_phases(cfg: TrainConfig, num_stages: int) -> list[Phase]:
    steps, last = cfg.steps, num_stages - 1
    if cfg.mode == "plain":
        return [Phase("plain", 0, steps, 1.0, None, (last,))]
    if cfg.mode in ("dsn", "dsn_dropout"):
        return [Phase(cfg.mode, 0, steps, 1.0)]
    if cfg.mode == "lc":
        dsn = steps // 2 if cfg.dsn_steps is None else cfg.dsn_steps
        return [p for p in (Phase("dsn", 0, dsn, 1.0), Phase("cascade", dsn, steps, cfg.rho)) if p.end > p.start]
    bounds = [round(k * steps / num_stages) for k in range(num_stages + 1)]
    return [Phase(f"stage{k + 1}", bounds[k], bounds[k + 1], cfg.rho, (k,), (k,))
            for k in range(num_stages) if bounds[k + 1] > bounds[k]]


def phase_at(phases: list[Phase], step: int) -> Phase:
    return next(p for p in phases if p.start <= step < p.end)


def poly_factor(phases: list[Phase], power: float):
    """The LR multiplier at a global step: poly decay restarted at each phase."""
    def factor(step: int) -> float:
        p = next((p for p in phases if p.start <= step < p.end), phases[-1])
        return max(0.0, 1.0 - (step - p.start) / (p.end - p.start)) ** power
    return factor


def set_trainable(model: LayerCascade, phase: Phase) -> None:
    """requires_grad per the phase, so that frozen parts get no gradient (and SGD skips them)."""
    for k, stage in enumerate(model.stages):
        stage.requires_grad_(phase.stages is None or k in phase.stages)
    for k, head in enumerate(model.heads):
        head.requires_grad_(phase.heads is None or k in phase.heads)


def phase_loss(phase: Phase, out: CascadeTrainOutput, target: torch.Tensor, cfg: TrainConfig,
               step: int, rank: int) -> torch.Tensor:
    if phase.name == "plain":
        return losses.plain_loss(out, target, IGNORE_INDEX)
    if phase.name == "dsn":
        return losses.dsn_loss(out, target, IGNORE_INDEX)
    if phase.name == "dsn_dropout":
        # seeded per (seed, step, rank): the same drops after a resume, different ones on each process
        seed = int(np.random.SeedSequence([cfg.seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
        gen = torch.Generator().manual_seed(seed)
        return losses.dropout_dsn_loss(out, target, cfg.drop_ratios, IGNORE_INDEX, generator=gen)
    if phase.name == "cascade":
        return losses.cascade_loss(out, target, IGNORE_INDEX)
    k = phase.stages[0]  # model cascade: stage k's loss on the pixels the frozen stages forward to it
    if k >= len(out.stage_logits):  # every pixel stopped before stage k: nothing to learn from
        return sum(l.sum() for l in out.stage_logits) * 0.0
    return losses.cascade_loss(CascadeTrainOutput([out.stage_logits[k]], [out.regions[k]]), target, IGNORE_INDEX)
