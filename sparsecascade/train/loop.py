"""The training loop: ``train``, one optimizer step, entering a phase (DDP re-wrapping), and the
JSON log lines."""
from __future__ import annotations

import gc
import inspect
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .._atomic import atomic_write_text
from ..bn_init import init_batchnorm_from_data
from ..cascade import LayerCascade
from ..data import dataset_class
from .builders import build_model, build_train_data, make_optimizer
from .checkpoint import CHECKPOINT_NAME, LOG_NAME, _restore, _save, _truncate_log
from .config import TrainConfig, eval_rho
from .distributed import DistContext, ResumableSampler, _Keyed, init_distributed, resolve_device
from .phases import Phase, phase_at, phase_loss, plan_phases, poly_factor, set_trainable


@dataclass
class TrainResult:
    model: LayerCascade
    step: int  # steps completed
    finished: bool  # all ``cfg.steps`` done (False when stopped by ``stop_after``)
    out_dir: Path
    checkpoint: Path
    last_loss: float = math.nan
    rank: int = 0  # this process's rank (data-parallel runs); only rank 0 writes files


class _Meter:
    """Loss and throughput between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss, self.count, self.images, self.t0 = 0.0, 0, 0, time.perf_counter()
        self.regions = None

    def add(self, loss: float, images: int, regions: list[float]):
        self.loss += loss
        self.count += 1
        self.images += images
        r = np.asarray(regions, dtype=np.float64)
        self.regions = r if self.regions is None else self.regions + r

    def summary(self) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = dict(loss=self.loss / max(self.count, 1), img_per_s=self.images / dt)
        if self.regions is not None:
            out["region_fractions"] = (self.regions / max(self.count, 1)).round(4).tolist()
        return out


def train(cfg: TrainConfig, *, model: Optional[LayerCascade] = None, train_data: Optional[Dataset] = None,
          resume: bool = False, stop_after: Optional[int] = None) -> TrainResult:
    """Train ``cfg`` (see the package docstring). ``model`` / ``train_data`` replace the ones the
    config names; ``resume`` continues from ``<out_dir>/last.pt`` when it exists; ``stop_after``
    ends this run (with a checkpoint) once that many steps are done in total."""
    cfg.validate()
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, model, train_data, resume, stop_after)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(cfg, ctx, model, train_data, resume, stop_after) -> TrainResult:
    device = resolve_device(cfg.device, ctx)
    out_dir = Path(cfg.out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
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

    step = 0
    if resume and ckpt_path.is_file():
        step = _restore(ckpt_path, cfg, ctx, model, optimizer, scheduler, scaler, spe)
    elif cfg.bn_init_images:
        # the first images of epoch 0's order, the same on every process (seeded by the seed alone)
        order = ResumableSampler(train_data, 1, 0, cfg.seed, 0)
        keyed = _Keyed(train_data)
        images = torch.stack([keyed[k][0] for _, k in zip(range(cfg.bn_init_images), order)])
        init_batchnorm_from_data(model, images)
    if ctx.world_size > 1:  # every process must resume from the same step (the same checkpoint)
        steps = [None] * ctx.world_size
        dist.all_gather_object(steps, step)
        if len(set(steps)) > 1:
            raise ValueError(f"resume: the processes start from steps {steps}; {ckpt_path} must be on "
                             f"storage that every process (every machine) sees")
    if ctx.is_main:
        for stale in out_dir.glob(f".{CHECKPOINT_NAME}.tmp*"):  # left by a run killed while saving
            stale.unlink()
        if step == 0 and log_path.exists():
            log_path.unlink()  # a fresh run: a new log
        _truncate_log(log_path, step)
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")

    end = cfg.steps if stop_after is None else min(cfg.steps, max(stop_after, step))
    state = dict(num_classes=num_classes, spe=spe)
    bar = None
    if ctx.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=cfg.mode, dynamic_ncols=True)
    meter, last_loss = _Meter(), math.nan
    phase, net = None, model
    loader_kw = dict(batch_size=per_rank, drop_last=True, num_workers=cfg.workers,
                     pin_memory=device.type == "cuda")
    try:
        while step < end:
            epoch = step // spe
            sampler = ResumableSampler(train_data, ctx.world_size, ctx.rank, cfg.seed, epoch, (step % spe) * per_rank)
            for images, labels in DataLoader(_Keyed(train_data), sampler=sampler, **loader_kw):
                if phase is None or not phase.start <= step < phase.end:
                    phase = phase_at(phases, step)
                    net = None
                    gc.collect()  # the previous DDP wrapper's hooks go with it
                    net = _enter_phase(model, phase, ctx, device)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (logged)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    out, loss = _optimizer_step(model, net, phase, images.to(device, non_blocking=True),
                                                labels.to(device, non_blocking=True), optimizer, scaler, cfg,
                                                step, ctx.rank)
                scheduler.step()
                step += 1
                last_loss = float(loss)
                trained_on = [float(r.float().mean()) for r in out.regions]  # a skipped stage: 0
                meter.add(last_loss, per_rank * ctx.world_size,
                          trained_on + [0.0] * (model.num_stages - len(trained_on)))
                if step % cfg.log_every == 0 or step == end:
                    _log(log_path, bar, meter, step, phase, lr, ctx)
                if bar is not None:
                    bar.update(1)
                if step % cfg.ckpt_every == 0 or step == end:
                    _save(ckpt_path, cfg, ctx, model, optimizer, scheduler, scaler, step, state)
                if step >= end:
                    break
    finally:
        if bar is not None:
            bar.close()
    set_trainable(model, Phase("all", 0, 1, model.rho))
    model.rho = eval_rho(cfg)
    return TrainResult(model, step, step >= cfg.steps, out_dir, ckpt_path, last_loss, ctx.rank)


def _optimizer_step(model, net, phase, images, labels, optimizer, scaler, cfg, step, rank):
    """Forward (under the caller's autocast), the phase's loss, backward, optional clipping, SGD step."""
    optimizer.zero_grad(set_to_none=True)
    out = net(images)
    with torch.autocast(images.device.type, enabled=False):  # the loss and backward in full precision
        loss = phase_loss(phase, out, labels, cfg, step, rank)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the {phase.name} loss is {loss.item()}; "
                                     f"lower lr (now {cfg.lr}), set grad_clip, or check the labels")
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:  # on the true gradients (unscaled), already reduced over processes
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    return out, loss.detach()


def _enter_phase(model: LayerCascade, phase: Phase, ctx: DistContext, device) -> nn.Module:
    """Apply the phase's rho and trainable parts; (re)wrap in DDP, which fixes the set of
    parameters it reduces when it is built."""
    model.rho = phase.rho
    set_trainable(model, phase)
    if ctx.world_size == 1:
        return model
    # Frozen parts (requires_grad False) are not DDP's concern; a parameter is unused only when the
    # cascade stops every pixel of this process's batch before its stage (rho < 1).
    kw = dict(find_unused_parameters=phase.rho < 1.0)
    # frozen BN: the buffers never change, so there is nothing to sync at each forward
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        kw["forward_sync_buffers"] = False
    else:
        kw["broadcast_buffers"] = False
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **kw)


def _log(path: Path, bar, meter: _Meter, step: int, phase: Phase, lr: float, ctx: DistContext) -> None:
    """One JSON line (rank 0): steps done, phase, the last step's backbone lr, the mean loss, images
    per second (all processes) and the share of pixels each stage was trained on, since the last line."""
    if not ctx.is_main:
        meter.reset()
        return
    entry = dict(step=step, phase=phase.name, lr=lr, **meter.summary(),
                 time=time.time())
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
    if bar is not None:
        bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}", img_s=f"{entry['img_per_s']:.1f}",
                        phase=phase.name, refresh=False)
    meter.reset()
