"""When a region convolution runs the dense convolution instead: measured on this processor / GPU.

Gathering every receptive field of the active pixels and multiplying them costs more per pixel
than the dense convolution does, by a factor that depends on the processor (measured on CPUs:
1.5x-2.5x at 100% active against oneDNN; on an H100, the Triton kernel 1.8x cuDNN at 100% and 1.13x
at 75% in bf16). Above the active fraction where both cost the same, "auto" runs the dense
convolution and masks its output. That crossover is measured once per process, never assumed from
a vendor string: on a CPU on a 3x3 128->128 convolution at 48x48 half active (about 40 ms); on a
GPU once per dtype, the Triton kernel against cuDNN on a 3x3 256->256 layer at 64x64, batch 16,
half active (GPU time from CUDA events; a second or two, the kernel's autotuning included).
``SPARSECASCADE_DENSE_FALLBACK=<fraction>`` or ``set_dense_fallback_fraction`` pins it everywhere.
Under ``torch.use_deterministic_algorithms(True)`` a GPU takes the upper bound instead of a timing,
so that the path a layer takes, and so its bits, is the same in every process.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels import ConvGeometry, region_conv2d_forward_torch
from ._backend import TRITON_DTYPES

# The measured crossover is kept within these bounds: up to 50% active the gather path wins on
# every processor measured (0.69-0.88x of the dense convolution at 50%, AMD EPYC with and without
# AVX-512), and above 90% the dense convolution does; a measurement disturbed by another process
# must not send every layer one way.
FRACTION_BOUNDS = (0.5, 0.9)
_fraction: Optional[float] = None  # a CPU's (any device but CUDA)
_cuda_fractions: dict = {}  # (device index, dtype) -> a GPU's, measured per dtype
_cuda_pinned: Optional[float] = None  # set_dense_fallback_fraction's value, for every GPU and dtype


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


def _half_active_layer(n: int, c: int, size: int, device=None, dtype: torch.dtype = torch.float32):
    """A 3x3 c->c layer (channels_last input and weight) on an n x size x size map whose left half is
    active (one coherent block): (x, w, mask, idx, geometry)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, size, size, device=device, generator=gen).to(dtype)
    w = (torch.randn(c, c, 3, 3, device=device, generator=gen) / (3 * c**0.5)).to(dtype)
    mask = torch.zeros(n, size, size, dtype=torch.bool, device=device)
    mask[:, :, : size // 2] = True
    idx = mask.reshape(-1).nonzero().squeeze(1)
    channels_last = torch.channels_last
    return (x.contiguous(memory_format=channels_last), w.contiguous(memory_format=channels_last), mask, idx,
            ConvGeometry(size, size, 3, 3, 1, 1))


def _crossover(dense_time: float, gather_time: float) -> float:
    """The active fraction where the gather path, timed at half active (its cost grows with the active
    rows), costs what the dense convolution does, kept within FRACTION_BOUNDS."""
    low, high = FRACTION_BOUNDS
    return min(high, max(low, 0.5 * dense_time / gather_time))


def measure_dense_fallback_fraction() -> float:
    """The active fraction at which the gather path and the dense convolution cost the same on this CPU."""
    n, c, size = 1, 128, 48
    x, w, mask, idx, geometry = _half_active_layer(n, c, size)
    taps = geometry.tap_table(idx)
    x_nhwc, w_khwc = x.permute(0, 2, 3, 1).contiguous(), w.permute(2, 3, 1, 0)

    def gather():
        out = torch.zeros(n, size, size, c)
        region_conv2d_forward_torch(x_nhwc, w_khwc, idx, out, geometry, taps=taps)

    def dense():
        F.conv2d(x, w, padding=1).masked_fill_(~mask[:, None], 0)

    with torch.no_grad():
        best = _best_times({"dense": dense, "gather": gather})
    return _crossover(best["dense"], best["gather"])


def measure_cuda_dense_fallback_fraction(device: torch.device, dtype: torch.dtype) -> float:
    """The crossover on a GPU, for ``dtype``: the Triton region kernel against cuDNN (channels_last)
    plus the mask, each timed by CUDA events over back-to-back calls on a layer big enough that the
    GPU, not the host, sets the pace (fp32 follows torch's TF32 switch, as both paths do)."""
    from ._backend import triton_region_conv

    forward = triton_region_conv()[0]
    n, c, size = 16, 256, 64
    x, w, mask, idx, geometry = _half_active_layer(n, c, size, device, dtype)
    out = torch.empty(n, size, size, c, dtype=dtype, device=device)
    x_nhwc, w_khwc = x.permute(0, 2, 3, 1), w.permute(2, 3, 1, 0)  # views of channels_last tensors

    def gather():
        forward(x_nhwc, w_khwc, idx, out.zero_(), geometry)

    def dense():
        F.conv2d(x, w, padding=1).masked_fill_(~mask[:, None], 0)

    def best_ms(fn, rounds: int = 5, calls: int = 5) -> float:
        times = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
        return min(times)

    with torch.no_grad(), torch.cuda.device(device):
        for fn in (gather, dense, gather, dense):  # compile and autotune, cuDNN's algorithm choice
            fn()
        torch.cuda.synchronize(device)
        dense_ms, gather_ms = best_ms(dense), best_ms(gather)
    return _crossover(dense_ms, gather_ms)


def _pinned() -> Optional[float]:
    pinned = os.environ.get("SPARSECASCADE_DENSE_FALLBACK", "")
    if not pinned:
        return None
    try:
        value = float(pinned)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"SPARSECASCADE_DENSE_FALLBACK: expected a fraction in [0, 1], got {pinned!r}")
    return value


def dense_fallback_fraction(device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> float:
    """The active fraction above which "auto" runs the dense convolution on ``device`` (default: the
    CPU, whose crossover is measured in float32 for every dtype; a GPU's is measured per dtype)."""
    global _fraction
    device = None if device is None else torch.device(device)
    if device is not None and device.type == "cuda":
        if _cuda_pinned is not None:
            return _cuda_pinned
        if dtype not in TRITON_DTYPES:  # float64 runs the torch twins on a GPU: never timed, the upper bound
            return FRACTION_BOUNDS[1]
        key = (device.index if device.index is not None else torch.cuda.current_device(), dtype)
        if key not in _cuda_fractions:
            pinned = _pinned()
            if pinned is not None:
                _cuda_fractions[key] = pinned
            elif torch.are_deterministic_algorithms_enabled():
                return FRACTION_BOUNDS[1]  # no timing decides a path (see the module), nothing cached
            else:
                _cuda_fractions[key] = measure_cuda_dense_fallback_fraction(device, dtype)
        return _cuda_fractions[key]
    if _fraction is None:
        pinned = _pinned()
        _fraction = measure_dense_fallback_fraction() if pinned is None else pinned
    return _fraction


def set_dense_fallback_fraction(fraction: Optional[float]) -> None:
    """Pin the crossover on every device (a fraction in [0, 1]; 1.0: never fall back), or None to
    measure it again."""
    global _fraction, _cuda_pinned
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0.0 <= fraction <= 1.0):
        raise ValueError(f"fraction: expected a number in [0, 1] or None, got {fraction!r}")
    _fraction = _cuda_pinned = None if fraction is None else float(fraction)
    _cuda_fractions.clear()
