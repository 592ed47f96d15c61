"""The training loop: ``train``, one optimizer step, entering a phase (DDP re-wrapping).

A run's folder is never overwritten by accident: ``train`` into a folder that holds a run needs
``resume=True`` (continue it) or ``overwrite=True`` (start it again), and refuses otherwise before
changing anything (``run_folder``). A diverging run stops itself (``divergence``) and keeps its last
good checkpoint. The JSON log lines are written by ``log``.
"""
from __future__ import annotations

import gc
import inspect
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..bn_init import init_batchnorm_from_data
from ..cascade import LayerCascade
from ..data import dataset_class
from .builders import build_model, build_train_data, make_optimizer
from .checkpoint import (CHECKPOINT_NAME, LOG_NAME, ResumeWarning, load_init_weights, load_latest_intact,
                         restore_training_state, save_training_state)
from .config import TrainConfig, eval_rho
from .distributed import (DistContext, KeyedDataset, ResumableSampler, global_mean_loss, gradient_strides,
                          init_distributed, resolve_device, unused_parameters_term)
from .divergence import DivergenceGuard, TrainingDiverged
from .log import Meter, write_log_line
from .phases import Phase, phase_at, phase_loss, plan_phases, poly_factor, set_trainable, stage_terms
from .run_folder import open_run_folder, refuse_existing_run


@dataclass
class TrainResult:
    model: LayerCascade
    step: int  # steps completed
    finished: bool  # all ``cfg.steps`` done (False when stopped by ``stop_after``)
    out_dir: Path
    checkpoint: Path
    last_loss: float = math.nan
    rank: int = 0  # this process's rank (data-parallel runs); only rank 0 writes files


def train(cfg: TrainConfig, *, model: Optional[LayerCascade] = None, train_data: Optional[Dataset] = None,
          resume: bool = False, overwrite: bool = False, stop_after: Optional[int] = None) -> TrainResult:
    """Train ``cfg`` (see the package docstring). ``model`` / ``train_data`` replace the ones the
    config names; ``resume`` continues from the newest intact checkpoint of ``out_dir`` (``last.pt``,
    else ``previous.pt``) when there is one; ``overwrite`` starts a run in a folder that holds one
    (without either, that is an error); ``stop_after`` ends this run (with a checkpoint) once that
    many steps are done in total."""
    cfg.validate()
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after: expected a positive int (the step to stop after) or None, got {stop_after!r}")
    if resume and overwrite:
        raise ValueError("resume, overwrite: pass one of them (continue the run, or start it again), not both")
    ctx = init_distributed(cfg.device)
    result = _train(cfg, ctx, model, train_data, resume, overwrite, stop_after)
    # Only after a run that ended well: after an error (a diverged run raises on every process at
    # once) destroying the group can deadlock against a process that is still tearing down or gone
    # (seen here: a 2-process diverging run hung once in a full test run; torchtitan#1342 made the
    # same change); the process exits and its sockets close with it.
    if ctx.owns_group:
        dist.destroy_process_group()
    return result


def _train(cfg, ctx, model, train_data, resume, overwrite, stop_after) -> TrainResult:
    device = resolve_device(cfg.device, ctx)
    out_dir = Path(cfg.out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    if not resume and not overwrite:
        refuse_existing_run(out_dir, ctx)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"batch_size: the global batch {cfg.batch_size} must divide evenly over "
                         f"{ctx.world_size} processes")
    per_rank = cfg.batch_size // ctx.world_size

    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    num_classes = train_data.num_classes if hasattr(train_data, "num_classes") else dataset_class(cfg.dataset).info.num_classes
    model = build_model(cfg, num_classes) if model is None else model
    if train_data is None:
        train_data = build_train_data(cfg, model)
    if cfg.mode == "dsn_dropout" and len(cfg.drop_ratios) != model.num_stages:
        raise ValueError(f"drop_ratios: expected one ratio per stage ({model.num_stages}), got {cfg.drop_ratios!r}")
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    phases = plan_phases(cfg, model.num_stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_factor(phases, cfg.poly_power))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    spe = (len(train_data) // ctx.world_size) // per_rank  # steps per epoch
    if spe < 1:
        raise ValueError(f"batch_size: {cfg.batch_size} is larger than the data set ({len(train_data)} samples "
                         f"over {ctx.world_size} processes)")

    step = saved_step = 0
    resumed_from, checkpoint = _resumable(out_dir, ctx) if resume else (None, None)
    if checkpoint is not None:
        step = saved_step = restore_training_state(resumed_from, checkpoint, cfg, ctx, model, optimizer, scheduler,
                                                   scaler, spe)
        del checkpoint
    elif cfg.init_weights is not None:
        load_init_weights(model, cfg.init_weights)
    elif cfg.bn_init_images:
        # the first images of epoch 0's order, the same on every process (seeded by the seed alone)
        order = ResumableSampler(train_data, 1, 0, cfg.seed, 0)
        keyed = KeyedDataset(train_data)
        images = torch.stack([keyed[k][0] for _, k in zip(range(cfg.bn_init_images), order)])
        init_batchnorm_from_data(model, images)
    if ctx.world_size > 1:  # every process must resume from the same step (the same checkpoint)
        steps = [None] * ctx.world_size
        dist.all_gather_object(steps, step)
        if len(set(steps)) > 1:
            raise ValueError(f"resume: the processes start from steps {steps}; {ckpt_path} must be on "
                             f"storage that every process (every machine) sees")
    if ctx.is_main:
        open_run_folder(out_dir, cfg, step, fresh=resumed_from is None)
    # last.pt becomes previous.pt at the next save only when it is known intact (written or verified here)
    keep_previous = resumed_from == ckpt_path

    end = cfg.steps if stop_after is None else min(cfg.steps, max(stop_after, step))
    state = dict(num_classes=num_classes, spe=spe)
    bar = None
    if ctx.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=cfg.mode, dynamic_ncols=True)
    meter, last_loss = Meter(), math.nan
    guard = DivergenceGuard(cfg.divergence_ratio)
    phase, net = None, model
    loader_kw = dict(batch_size=per_rank, drop_last=True, num_workers=cfg.workers,
                     pin_memory=device.type == "cuda")
    try:
        while step < end:
            epoch = step // spe
            sampler = ResumableSampler(train_data, ctx.world_size, ctx.rank, cfg.seed, epoch, (step % spe) * per_rank)
            for images, labels in DataLoader(KeyedDataset(train_data), sampler=sampler, **loader_kw):
                if phase is None or not phase.start <= step < phase.end:
                    phase = phase_at(phases, step)
                    net = None
                    gc.collect()  # the previous DDP wrapper's hooks go with it
                    net = _enter_phase(model, phase, ctx, device)
                    guard.reset()
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (logged)
                try:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        out, last_loss = _optimizer_step(model, net, phase, images.to(device, non_blocking=True),
                                                         labels.to(device, non_blocking=True), optimizer, scaler,
                                                         cfg, step, ctx, guard)
                except TrainingDiverged as e:
                    raise _diverged(e, step + 1, phase, cfg, ckpt_path, saved_step) from None
                scheduler.step()
                step += 1
                trained_on = [float(r.float().mean()) for r in out.regions]  # a skipped stage: 0
                meter.add(last_loss, per_rank * ctx.world_size,
                          trained_on + [0.0] * (model.num_stages - len(trained_on)))
                if step % cfg.log_every == 0 or step == end:
                    write_log_line(log_path, bar, meter, step, phase, lr, ctx, device)
                if bar is not None:
                    bar.update(1)
                if step % cfg.ckpt_every == 0 or step == end:
                    if not _weights_finite(model):
                        raise _diverged(TrainingDiverged("the weights hold NaN or inf"), step, phase, cfg,
                                        ckpt_path, saved_step)
                    save_training_state(ckpt_path, cfg, ctx, model, optimizer, scheduler, scaler, step, state,
                                        keep_previous)
                    keep_previous, saved_step = True, step
                if step >= end:
                    break
    finally:
        if bar is not None:
            bar.close()
    set_trainable(model, Phase("all", 0, 1, model.rho))
    model.rho = eval_rho(cfg)
    return TrainResult(model, step, step >= cfg.steps, out_dir, ckpt_path, last_loss, ctx.rank)


def _resumable(out_dir: Path, ctx: DistContext):
    """(path, state) of the newest intact checkpoint, or (None, None); the fallback warning once."""
    with warnings.catch_warnings():
        if not ctx.is_main:
            warnings.simplefilter("ignore", ResumeWarning)
        return load_latest_intact(out_dir)


def _optimizer_step(model, net, phase, images, labels, optimizer, scaler, cfg, step, ctx, guard):
    """Forward (under the caller's autocast), the phase's loss, the divergence check, backward, optional
    clipping, SGD step. Returns the output and the loss over all processes."""
    optimizer.zero_grad(set_to_none=True)
    out = net(images)
    with torch.autocast(images.device.type, enabled=False):  # the loss and backward in full precision
        loss, value = _step_loss(model, phase, out, labels, cfg, step, ctx)
        guard.check(value)  # the same value on every process: all stop at the same step
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:  # on the true gradients (unscaled), already reduced over processes
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    return out, value


def _step_loss(model, phase, out, labels, cfg, step, ctx) -> tuple[torch.Tensor, float]:
    """(the loss to back-propagate, its value over the global batch); with several processes, each
    stage's mean is over the labelled pixels of all of them (``distributed.global_mean_loss``)."""
    if ctx.world_size == 1:
        loss = phase_loss(phase, out, labels, cfg, step, ctx.rank)
        return loss, float(loss.detach())
    terms = stage_terms(phase, out, labels, cfg, step, ctx.rank)
    loss, value = global_mean_loss(terms, model.num_stages, ctx)
    return loss + unused_parameters_term(model, len(out.stage_logits)), value


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def _diverged(error: TrainingDiverged, step: int, phase: Phase, cfg: TrainConfig, ckpt_path: Path,
              saved_step: int) -> TrainingDiverged:
    kept = (f"the last good checkpoint is {ckpt_path} (step {saved_step})" if saved_step
            else "no checkpoint was written")
    return TrainingDiverged(f"training diverged at step {step} ({phase.name}): {error}; stopped, and {kept}; "
                            f"lower lr (now {cfg.lr:g}) or set grad_clip, then train again")


def _enter_phase(model: LayerCascade, phase: Phase, ctx: DistContext, device) -> nn.Module:
    """Apply the phase's rho and trainable parts; (re)wrap in DDP, which fixes the set of
    parameters it reduces when it is built."""
    model.rho = phase.rho
    set_trainable(model, phase)
    if ctx.world_size == 1:
        return model
    # Frozen parts (requires_grad False) are not DDP's concern; the parameters of a stage that ran on no
    # pixel of this process's batch get zero gradients through ``unused_parameters_term``: every
    # trainable parameter has a gradient at every step, so DDP needs no search for unused ones.
    gradient_strides(model)
    kw = dict(find_unused_parameters=False)
    # frozen BN: the buffers never change, so there is nothing to sync at each forward
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        kw["forward_sync_buffers"] = False
    else:
        kw["broadcast_buffers"] = False
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **kw)
