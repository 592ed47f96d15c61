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
from ..labelmaps import labels_at
from ..rho import Rho
from .config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """A stretch of steps with one loss, one rho and one set of trainable stages and heads."""

    name: str  # "plain", "dsn", "dsn_dropout", "cascade", or "stage<k>" (model cascade, 1-based)
    start: int
    end: int
    rho: Rho
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


@dataclass
class StageTerm:
    """Stage ``stage``'s part of a phase's loss: ``loss`` is a mean over ``weight``, the labelled pixels
    it covers (their class weights' sum with class weights); a data-parallel run rescales it by that."""

    stage: int  # 0-based
    loss: torch.Tensor
    weight: torch.Tensor  # 0-dim float64


def phase_loss(phase: Phase, out: CascadeTrainOutput, target: torch.Tensor, cfg: TrainConfig,
               step: int, rank: int) -> torch.Tensor:
    """The phase's loss: the sum of its stage terms (zero, still in the graph, when it has none)."""
    terms = stage_terms(phase, out, target, cfg, step, rank)
    if not terms:  # model cascade: every pixel stopped before the stage it trains: nothing to learn from
        return sum(l.sum() for l in out.stage_logits) * 0.0
    return sum(t.loss for t in terms)


def stage_terms(phase: Phase, out: CascadeTrainOutput, target: torch.Tensor, cfg: TrainConfig,
                step: int, rank: int) -> list[StageTerm]:
    """Per stage that the phase trains, the cross-entropy over the labelled pixels of its region."""
    target = target.long()
    weights = None if cfg.class_weights is None else torch.as_tensor(cfg.class_weights, dtype=torch.float64)
    terms = []
    for k, region in _phase_regions(phase, out, cfg, step, rank):
        logits = out.stage_logits[k]
        loss = losses.cascade_loss(CascadeTrainOutput([logits], [region]), target, IGNORE_INDEX,
                                   class_weights=cfg.class_weights)
        terms.append(StageTerm(k, loss, _labelled_weight(logits, target, region, weights)))
    return terms


def _phase_regions(phase: Phase, out: CascadeTrainOutput, cfg: TrainConfig, step: int, rank: int):
    """(stage, the pixels its loss covers: None for all) for each stage the phase's loss has."""
    ran = range(len(out.stage_logits))  # a stage with no active pixel in the batch did not run
    if phase.name == "plain":  # the last stage's head alone
        return [(ran[-1], None)]
    if phase.name == "dsn":
        return [(k, None) for k in ran]
    if phase.name == "dsn_dropout":
        # seeded per (seed, step, rank): the same drops after a resume, different ones on each process;
        # drawn as losses.dropout_dsn_loss draws them
        seed = int(np.random.SeedSequence([cfg.seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
        gen = torch.Generator().manual_seed(seed)
        if len(cfg.drop_ratios) != len(out.stage_logits):
            raise ValueError(f"drop_ratios: expected one ratio per stage ({len(out.stage_logits)}), "
                             f"got {len(cfg.drop_ratios)}")
        keep = []
        for logits, ratio in zip(out.stage_logits, cfg.drop_ratios):
            n, _, h, w = logits.shape
            keep.append(torch.rand(n, h, w, generator=gen, device="cpu").to(logits.device) >= ratio)
        return list(zip(ran, keep))
    if phase.name == "cascade":
        return [(k, out.regions[k]) for k in ran]
    k = phase.stages[0]  # model cascade: stage k on the pixels the frozen stages forward to it
    return [(k, out.regions[k])] if k in ran else []


def _labelled_weight(logits: torch.Tensor, target: torch.Tensor, region, class_weights) -> torch.Tensor:
    """How many labelled pixels (or their class weights' sum) a stage's mean is taken over."""
    labels = labels_at(target, tuple(logits.shape[-2:]))
    counted = labels != IGNORE_INDEX
    if region is not None:
        counted &= region
    if class_weights is None:
        return counted.sum().to(torch.float64)
    return class_weights.to(labels.device)[labels[counted]].sum()
