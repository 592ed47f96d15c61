"""When a region convolution on a CPU runs the dense convolution instead: measured on this processor.

Gathering every receptive field of the active pixels and multiplying them costs more per pixel
than the dense convolution (oneDNN) does, by a factor that depends on the processor (measured:
1.5x-2.5x at 100% active). Above the active fraction where both cost the same, "auto" on a CPU
runs the dense convolution and masks its output. That crossover is measured once per process, on
a 3x3 128->128 convolution at 48x48 half active (about 40 ms), never assumed from a vendor string;
``SPARSECASCADE_DENSE_FALLBACK=<fraction>`` or ``set_dense_fallback_fraction`` pins it.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels import ConvGeometry, region_conv2d_forward_torch

# The measured crossover is kept within these bounds: up to 50% active the gather path wins on
# every processor measured (0.69-0.88x of the dense convolution at 50%, AMD EPYC with and without
# AVX-512), and above 90% the dense convolution does; a measurement disturbed by another process
# must not send every layer one way.
FRACTION_BOUNDS = (0.5, 0.9)
_fraction: Optional[float] = None


def _best_times(fns: dict, reps: int = 5) -> dict:
    """Best wall time of each function, interleaved round by round (a disturbance hits all alike)."""
    best = {name: float("inf") for name in fns}
    for round_ in range(reps + 2):  # rounds 0 and 1 warm up (the first oneDNN call sets up its kernels)
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ > 1:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure_dense_fallback_fraction() -> float:
    """The active fraction at which the gather path and the dense convolution cost the same here,
    from both timed on a half-active map (the gather path's cost grows with the active rows)."""
    gen = torch.Generator().manual_seed(0)
    c, size = 128, 48
    x = torch.randn(1, c, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, :, : size // 2] = True  # half of the map, one coherent block
    idx = mask.reshape(-1).nonzero().squeeze(1)
    geometry = ConvGeometry(size, size, 3, 3, 1, 1)
    taps = geometry.tap_table(idx)
    x_nhwc, w_khwc = x.permute(0, 2, 3, 1).contiguous(), w.permute(2, 3, 1, 0)

    def gather():
        out = torch.zeros(1, size, size, c)
        region_conv2d_forward_torch(x_nhwc, w_khwc, idx, out, geometry, taps=taps)

    def dense():
        F.conv2d(x, w, padding=1).masked_fill_(~mask[:, None], 0)

    with torch.no_grad():
        best = _best_times({"dense": dense, "gather": gather})
    low, high = FRACTION_BOUNDS
    return min(high, max(low, 0.5 * best["dense"] / best["gather"]))


def dense_fallback_fraction() -> float:
    """The active fraction above which "auto" on a CPU runs the dense convolution (see the module)."""
    global _fraction
    if _fraction is None:
        pinned = os.environ.get("SPARSECASCADE_DENSE_FALLBACK", "")
        if pinned:
            try:
                value = float(pinned)
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SPARSECASCADE_DENSE_FALLBACK: expected a fraction in [0, 1], got {pinned!r}")
            _fraction = value
        else:
            _fraction = measure_dense_fallback_fraction()
    return _fraction


def set_dense_fallback_fraction(fraction: Optional[float]) -> None:
    """Pin the crossover (a fraction in [0, 1]; 1.0: never fall back), or None to measure it again."""
    global _fraction
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0.0 <= fraction <= 1.0):
        raise ValueError(f"fraction: expected a number in [0, 1] or None, got {fraction!r}")
    _fraction = None if fraction is None else float(fraction)
