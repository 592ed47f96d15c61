"""Timing and mask helpers shared by the benchmarks."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def measure_ms(fn, *, reps: int = 10, warmup: int = 2, device: torch.device | None = None) -> float:
    """Median wall time of ``fn()`` in ms. On CUDA, Triton's do_bench (L2 flushed, events)."""
    if device is not None and device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0])
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def coherent_mask(n: int, h: int, w: int, fraction: float, *, seed: int = 0, device="cpu") -> torch.Tensor:
    """A bool (N, H, W) mask with exactly round(fraction * H * W) active pixels per image, in blobs.

    Hard pixels cluster on objects and boundaries, so benchmark masks are a smooth random field
    thresholded at its quantile, not salt-and-pepper noise.
    """
    gen = torch.Generator().manual_seed(seed)
    field = torch.rand(n, 1, max(2, h // 8), max(2, w // 8), generator=gen)
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    field = field + 1e-6 * torch.rand(n, h, w, generator=gen)  # break ties for an exact count
    k = round(fraction * h * w)
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    if k > 0:
        top = field.reshape(n, -1).topk(k, dim=1).indices
        mask.scatter_(1, top, True)
    return mask.view(n, h, w).to(device)
