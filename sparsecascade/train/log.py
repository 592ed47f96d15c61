"""The run's log: ``log.jsonl``, one JSON line per ``log_every`` steps, and the progress bar's figures."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .distributed import DistContext
from .phases import Phase


class Meter:
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


def write_log_line(path: Path, bar, meter: Meter, step: int, phase: Phase, lr: float, ctx: DistContext,
                   device) -> None:
    """One JSON line (rank 0): steps done, phase, the last step's backbone lr, the mean loss, images
    per second (all processes) and the share of pixels each stage was trained on, since the last line;
    loss and shares are those of the global batch (every process calls this: a collective)."""
    if ctx.world_size > 1 and meter.regions is not None:  # each process's shares over as many pixels
        regions = torch.from_numpy(meter.regions).to(device)  # NCCL reduces device tensors only
        dist.all_reduce(regions)
        meter.regions = regions.cpu().numpy() / ctx.world_size
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
