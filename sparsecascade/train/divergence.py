"""Stopping a run that diverges: a non-finite loss, or one far above its running median.

The guard sees the loss of every step (over all processes, so that every process stops at the
same step) before the backward pass, so that a diverged step never reaches the weights; the loop
then ends the run without writing a checkpoint, and the last one on disk is the last good one.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np


class TrainingDiverged(RuntimeError):
    """The loss became non-finite or exploded: the run stopped, its last checkpoint kept."""


class DivergenceGuard:
    """Raises ``TrainingDiverged`` for a non-finite loss, or a loss above ``ratio`` times the median
    of the last ``window`` losses (once ``warmup`` of them are known; ``ratio`` None: no such check).

    ``reset()`` at a phase change: a phase's loss has a scale of its own (the cascade loss covers
    the hard pixels, a model-cascade stage starts from scratch)."""

    def __init__(self, ratio: Optional[float] = 10.0, window: int = 50, warmup: int = 10):
        self.ratio, self.warmup = ratio, warmup
        self.recent: deque = deque(maxlen=window)

    def reset(self) -> None:
        self.recent.clear()

    def check(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss is {loss}")
        if self.ratio is not None and len(self.recent) >= self.warmup:
            median = float(np.median(self.recent))
            if median > 0 and loss > self.ratio * median:
                raise TrainingDiverged(f"the loss {loss:.4g} is {loss / median:.0f}x its running median {median:.4g}")
        self.recent.append(loss)
