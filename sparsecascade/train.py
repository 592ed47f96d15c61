"""Training: LC (DSN initial training, then cascade training with rho) and the paper's baselines.

Modes (DESIGN.md section 1, the paper's Table 2), all on one backbone and one step budget:

    plain          the last stage's head alone (rho = 1: every pixel goes through every stage)
    dsn            every stage's loss on every labelled pixel (rho = 1)
    dsn_dropout    DSN with each stage's labels randomly dropped at ``drop_ratios`` (LC's drop ratio)
    model_cascade  stage k and its head trained in turn, earlier stages frozen, on the pixels the
                   frozen earlier stages forward at rho (each stage gets steps / K)
    lc             ``dsn_steps`` of DSN, then cascade training: stage k's loss on its region only

SGD with momentum; a poly learning rate (``lr * (1 - t / T) ** poly_power``) restarted for each
phase (LC's two steps, MC's stages); BatchNorm is frozen by ``LayerCascade``; mixed precision on
CUDA (bfloat16 where supported, else float16 with a gradient scaler).

Resuming is exact: the data order (DistributedSampler's seeded shuffle, resumed mid-epoch), the
augmentation (seeded per sample) and label dropout (seeded per step) are functions of the seed and
the step, and a checkpoint holds model, optimizer, scheduler, scaler, step, sampler position and
the RNG states. On a CPU a killed and resumed run ends with the weights of an uninterrupted one,
bit for bit; on a GPU up to the non-determinism of its kernels.

Data parallel: launch with torchrun (``WORLD_SIZE`` etc. in the environment); gloo on a CPU, NCCL on
GPUs. ``batch_size`` is the global batch, split evenly over the processes.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import inspect
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from . import losses
from .bn_init import init_batchnorm_from_data
from ._atomic import atomic_write, atomic_write_text
from .cascade import CascadeTrainOutput, LayerCascade
from .data import IGNORE_INDEX, SegmentationDataset, build_dataset, dataset_class, train_transform
from .factory import create_model
from .models.registry import IMAGENET_MEAN, IMAGENET_STD

MODES = ("plain", "dsn", "dsn_dropout", "model_cascade", "lc")
CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 1
# LC's drop ratios at rho = 0.985 (the paper's Table 1: 23% of the pixels stop at stage 1 and 29%
# at stage 2, so stage 2 sees 77% of them and stage 3 48%).
LC_DROP_RATIOS = (0.0, 0.23, 0.52)


# -- configuration --------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a training run depends on; the JSON recipe files hold these fields."""

    # model: a name of ``sparsecascade.list_models()`` or "package.module:function" (called with
    # ``num_classes=`` and ``model_kwargs``, returning a LayerCascade)
    model: str = "lc_resnet18"
    model_kwargs: dict = field(default_factory=dict)
    backbone_weights: Optional[str] = None  # ImageNet checkpoint (file) for the backbone
    # from scratch: set the frozen BatchNorm statistics from this many training images before
    # step 0 (data-dependent init, ``sparsecascade.bn_init``); 0: keep them (ImageNet or identity)
    bn_init_images: int = 0
    # data
    dataset: str = "camvid"
    data_root: Optional[str] = None  # else the data set's environment variable
    split: Optional[str] = None  # None: the data set's training split (VOC: train_aug when present)
    crop_size: tuple = (240, 320)
    scale_range: tuple = (0.5, 2.0)
    flip: bool = True
    # method
    mode: str = "lc"
    rho: float = 0.985
    dsn_steps: Optional[int] = None  # lc: DSN initial-training steps (None: half of ``steps``)
    drop_ratios: tuple = LC_DROP_RATIOS  # dsn_dropout: per stage
    # optimisation
    steps: int = 1000
    batch_size: int = 8  # global, over all processes
    lr: float = 0.01
    head_lr_mult: float = 10.0  # the heads are new layers: a larger rate, as DeepLab's classifiers
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    grad_clip: Optional[float] = None  # max global gradient norm (None: no clipping)
    amp: bool = True  # CUDA only
    seed: int = 0
    # run control: none of these changes the result, so a resumed run may set them differently
    out_dir: str = "runs/train"
    device: str = "auto"
    workers: int = 2
    ckpt_every: int = 100
    log_every: int = 10
    progress: bool = True

    RUN_CONTROL = ("out_dir", "device", "workers", "ckpt_every", "log_every", "progress", "data_root",
                   "backbone_weights")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"recipe: unknown keys {unknown}; expected some of {sorted(known)}")
        cfg = cls(**values)
        cfg.crop_size = tuple(cfg.crop_size) if not isinstance(cfg.crop_size, int) else (cfg.crop_size,) * 2
        cfg.scale_range, cfg.drop_ratios = tuple(cfg.scale_range), tuple(cfg.drop_ratios)
        return cfg

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"recipe: {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe: {path} is not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"recipe: {path} must hold a JSON object of TrainConfig fields")
        values.pop("_comment", None)
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def validate(self) -> "TrainConfig":
        if isinstance(self.crop_size, int):
            self.crop_size = (self.crop_size, self.crop_size)
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho: expected a number in [0, 1], got {self.rho!r}")
        for name in ("steps", "batch_size", "ckpt_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.dsn_steps is not None and not 0 <= self.dsn_steps <= self.steps:
            raise ValueError(f"dsn_steps: expected an int in [0, steps={self.steps}], got {self.dsn_steps!r}")
        if not all(0.0 <= r <= 1.0 for r in self.drop_ratios):
            raise ValueError(f"drop_ratios: expected values in [0, 1], got {self.drop_ratios!r}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size: expected (height, width), got {self.crop_size!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected a positive number or None, got {self.grad_clip!r}")
        if not isinstance(self.bn_init_images, int) or self.bn_init_images == 1 or self.bn_init_images < 0:
            raise ValueError(f"bn_init_images: expected 0 (off) or an int >= 2, got {self.bn_init_images!r}")
        if self.lr <= 0 or self.head_lr_mult <= 0:
            raise ValueError(f"lr, head_lr_mult: expected positive numbers, got {self.lr!r}, {self.head_lr_mult!r}")
        return self

    def identity(self) -> dict:
        """The fields that determine the trained weights (compared when resuming)."""
        # through JSON, so that a tuple in a Python config equals the list of a recipe
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k not in self.RUN_CONTROL}))


def eval_rho(cfg: TrainConfig) -> float:
    """The rho a model trained in ``cfg.mode`` is evaluated at: 1 for the networks trained without a
    cascade (plain, DSN, DSN + dropout), ``cfg.rho`` for LC and the model cascade."""
    return 1.0 if cfg.mode in ("plain", "dsn", "dsn_dropout") else cfg.rho


def drop_ratios_from_stop_fractions(stop_fractions: Sequence[float]) -> tuple[float, ...]:
    """DSN + dropout's per-stage drop ratios from an LC model's measured stop fractions: stage k
    drops the share of pixels that stopped before it."""
    return tuple(float(sum(stop_fractions[:k])) for k in range(len(stop_fractions)))


# -- phases ---------------------------------------------------------------------------------------
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


# -- model, data, devices -------------------------------------------------------------------------
def build_model(cfg: TrainConfig, num_classes: int) -> LayerCascade:
    """The model of ``cfg.model`` (a registered name, or "module:function")."""
    kwargs = dict(cfg.model_kwargs)
    if ":" in cfg.model:
        module_name, _, fn_name = cfg.model.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model: cannot import {cfg.model!r} ({e}); expected 'package.module:function'") from None
        model = fn(num_classes=num_classes, **kwargs)
    else:
        model = create_model(cfg.model, num_classes, rho=cfg.rho, backbone_weights=cfg.backbone_weights, **kwargs)
    if not isinstance(model, LayerCascade):
        raise TypeError(f"model: {cfg.model!r} built a {type(model).__name__}, expected a LayerCascade")
    return model


def model_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean/std the model's backbone expects (ImageNet's when it does not say)."""
    return tuple(getattr(model, "mean", IMAGENET_MEAN)), tuple(getattr(model, "std", IMAGENET_STD))


def build_train_data(cfg: TrainConfig, model: nn.Module) -> SegmentationDataset:
    mean, std = model_normalization(model)
    transform = train_transform(cfg.crop_size, mean, std, scale_range=cfg.scale_range, flip=cfg.flip)
    return build_dataset(cfg.dataset, cfg.split, cfg.data_root, transform=transform, seed=cfg.seed)


class ResumableSampler(Sampler):
    """DistributedSampler's order (a shuffle seeded by seed + epoch; this rank's every world-th
    index; the tail dropped so that every rank gets as many), from sample ``start`` of ``epoch``.

    Yields ``(epoch, index)`` keys: the data set seeds the sample's augmentation with them.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, epoch: int, start: int = 0):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.inner.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        for i, index in enumerate(self.inner):
            if i >= self.start:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class _Keyed(Dataset):
    """Passes ``(epoch, index)`` to data sets that seed by it, the index alone to any other."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.keyed = isinstance(dataset, SegmentationDataset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key] if self.keyed else self.dataset[key[1]]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run initialised the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def resolve_device(device: str, ctx: DistContext) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{ctx.local_rank}")
    return dev


def make_optimizer(model: LayerCascade, cfg: TrainConfig) -> torch.optim.SGD:
    backbone = [p for p in model.stages.parameters()]
    heads = [p for p in model.heads.parameters()]
    return torch.optim.SGD([dict(params=backbone, lr=cfg.lr), dict(params=heads, lr=cfg.lr * cfg.head_lr_mult)],
                           lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# -- checkpoints ----------------------------------------------------------------------------------
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


# -- the loop -------------------------------------------------------------------------------------
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
    """Train ``cfg`` (see the module docstring). ``model`` / ``train_data`` replace the ones the
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
