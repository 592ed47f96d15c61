"""The training configuration: ``TrainConfig`` (the JSON recipes' fields) and its validation, the
modes, and what follows from a config alone (the evaluation rho, DSN + dropout's drop ratios)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..rho import Rho, check_rho

MODES = ("plain", "dsn", "dsn_dropout", "model_cascade", "lc")
# LC's drop ratios at rho = 0.985 (the paper's Table 1: 23% of the pixels stop at stage 1 and 29%
# at stage 2, so stage 2 sees 77% of them and stage 3 48%).
LC_DROP_RATIOS = (0.0, 0.23, 0.52)


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
    # every weight of the model (backbone, new layers, heads) from an earlier run: a training
    # checkpoint (``last.pt``) or a safetensors file of the model's state dict; the optimizer and the
    # learning-rate schedule start afresh (a warm restart); ``backbone_weights`` is then not read.
    # None: from ``backbone_weights`` / scratch
    init_weights: Optional[str] = None
    # data
    dataset: str = "camvid"
    data_root: Optional[str] = None  # else the data set's environment variable
    split: Optional[str] = None  # None: the data set's training split (VOC: train_aug when present)
    crop_size: tuple = (240, 320)
    scale_range: tuple = (0.5, 2.0)
    flip: bool = True
    # method
    mode: str = "lc"
    rho: Rho = 0.985  # or one per stage but the last (a recipe's list)
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
    # None, or one loss weight per class (e.g. ``sparsecascade.train.median_frequency_weights``)
    class_weights: Optional[list] = None
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
    # stop the run when a step's loss exceeds this many times the median of the phase's recent losses
    # (a non-finite loss always stops it); None: only non-finite losses stop it
    divergence_ratio: Optional[float] = 10.0

    RUN_CONTROL = ("out_dir", "device", "workers", "ckpt_every", "log_every", "progress", "data_root",
                   "backbone_weights", "divergence_ratio")

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
        self.rho = check_rho(self.rho)  # its length is checked against the model, when it is built
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
        if self.init_weights is not None and self.bn_init_images:
            raise ValueError(f"bn_init_images: expected 0 with init_weights (the BatchNorm statistics come from "
                             f"{self.init_weights}), got {self.bn_init_images!r}")
        if self.class_weights is not None and (
                not isinstance(self.class_weights, (list, tuple))
                or not all(isinstance(v, (int, float)) and v > 0 for v in self.class_weights)):
            raise ValueError(f"class_weights: expected None or a list of positive numbers, got {self.class_weights!r}")
        if self.divergence_ratio is not None and not self.divergence_ratio > 1:
            raise ValueError(f"divergence_ratio: expected a number > 1 or None, got {self.divergence_ratio!r}")
        if self.lr <= 0 or self.head_lr_mult <= 0:
            raise ValueError(f"lr, head_lr_mult: expected positive numbers, got {self.lr!r}, {self.head_lr_mult!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {self.momentum!r}")
        for name in ("weight_decay", "poly_power"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")
        for name in ("seed", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        return self

    def identity(self) -> dict:
        """The fields that determine the trained weights (compared when resuming)."""
        # through JSON, so that a tuple in a Python config equals the list of a recipe
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k not in self.RUN_CONTROL}))


def eval_rho(cfg: TrainConfig) -> Rho:
    """The rho a model trained in ``cfg.mode`` is evaluated at: 1 for the networks trained without a
    cascade (plain, DSN, DSN + dropout), ``cfg.rho`` for LC and the model cascade."""
    return 1.0 if cfg.mode in ("plain", "dsn", "dsn_dropout") else cfg.rho


def drop_ratios_from_stop_fractions(stop_fractions: Sequence[float]) -> tuple[float, ...]:
    """DSN + dropout's per-stage drop ratios from an LC model's measured stop fractions: stage k
    drops the share of pixels that stopped before it."""
    return tuple(float(sum(stop_fractions[:k])) for k in range(len(stop_fractions)))
