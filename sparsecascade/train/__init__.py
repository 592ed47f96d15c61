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
bit for bit; on a GPU up to the non-determinism of its kernels. Resuming is also safe: each checkpoint
carries a checksum, the one before it is kept as ``previous.pt``, and a damaged ``last.pt`` falls
back to it (with a warning); ``train`` into a folder holding a run needs ``resume`` or ``overwrite``.
A run whose loss turns non-finite or explodes stops itself (``TrainingDiverged``). A run may start from
every weight of an earlier one (``init_weights``: a warm restart, with a fresh optimizer and schedule).

Data parallel: launch with torchrun (``WORLD_SIZE`` etc. in the environment); gloo on a CPU, NCCL on
GPUs. ``batch_size`` is the global batch, split evenly over the processes; each stage's loss is the
mean over the labelled pixels of the global batch, so N processes train as one.

Modules: ``config`` (TrainConfig and its validation), ``phases`` (the phases, their losses and the
poly rate), ``builders`` (model, data, optimizer), ``distributed`` (process group, device, resumable
sampler, the global loss), ``checkpoint`` (saving, verifying, restoring and loading), ``run_folder``
(the files that mark a run, refusing to start over one, opening it), ``log`` (the JSON log lines),
``divergence`` (stopping a diverging run), ``loop`` (``train``).
"""
from __future__ import annotations

from .builders import (build_model, build_train_data, make_optimizer, median_frequency_weights, model_normalization,
                       new_layer_names)
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, LOG_NAME, PREVIOUS_NAME, CheckpointError, ResumeWarning,
                         atomic_save, load_checkpoint, load_latest_intact, load_trained_model, rng_state, set_rng_state)
from .config import LC_DROP_RATIOS, MODES, TrainConfig, drop_ratios_from_stop_fractions, eval_rho
from .distributed import DistContext, ResumableSampler, init_distributed, resolve_device
from .divergence import DivergenceGuard, TrainingDiverged
from .loop import TrainResult, train
from .phases import Phase, phase_at, phase_loss, plan_phases, poly_factor, set_trainable

__all__ = [
    "TrainConfig", "MODES", "LC_DROP_RATIOS", "eval_rho", "drop_ratios_from_stop_fractions",
    "Phase", "plan_phases", "phase_at", "poly_factor", "set_trainable", "phase_loss",
    "build_model", "model_normalization", "build_train_data", "make_optimizer", "new_layer_names",
    "median_frequency_weights",
    "DistContext", "init_distributed", "resolve_device", "ResumableSampler",
    "atomic_save", "rng_state", "set_rng_state", "load_checkpoint", "load_trained_model",
    "CHECKPOINT_NAME", "PREVIOUS_NAME", "LOG_NAME", "CHECKPOINT_FORMAT", "CheckpointError", "ResumeWarning",
    "load_latest_intact", "DivergenceGuard", "TrainingDiverged",
    "train", "TrainResult",
]
