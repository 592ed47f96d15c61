"""Timing and mask helpers shared by the benchmarks."""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from .._atomic import atomic_write_text


def measure_ms(fn, *, reps: int = 10, warmup: int = 2, device: torch.device | None = None) -> float:
    """Wall time of ``fn()`` in ms: on CUDA the median of Triton's do_bench (L2 flushed, events);
    on a CPU the minimum over ``reps`` runs, the estimate least disturbed by other processes."""
    if device is not None and device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0])
    return min(measure_all_ms({"fn": fn}, reps=reps, warmup=warmup)["fn"])


def measure_all_ms(fns: dict, *, reps: int = 10, warmup: int = 2) -> dict:
    """CPU wall times (ms) of several functions, interleaved round by round so that a disturbance
    (another process, frequency changes) hits all of them alike: {name: [ms per rep]}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


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


def cpu_model() -> str:
    """The processor as /proc/cpuinfo names it, with its family/model and widest vector extension
    (a ratio measured on one processor does not carry to another)."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector})"


def environment() -> dict:
    """What the numbers were measured on, and the CPU path's choices measured in this process."""
    from ..kernels.region_conv.cpu_gemm import chosen_gemm
    from ..ops import dense_fallback_fraction

    return dict(python=platform.python_version(), torch=torch.__version__, machine=platform.machine(),
                cpu=cpu_model(), threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                cpu_gemm_small=chosen_gemm(1), cpu_gemm_large=chosen_gemm(1 << 30),
                dense_fallback_fraction=round(dense_fallback_fraction(), 3),
                cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def write_results(path: str, benchmark: str, argv, rows: list) -> None:
    """The results, the exact command and the environment as JSON, written atomically."""
    argv = list(sys.argv[2:] if argv is None else argv)
    atomic_write_text(path, json.dumps(dict(command=" ".join([f"python -m sparsecascade.bench {benchmark}"] + argv),
                                            environment=environment(), results=rows), indent=1))
    print(f"wrote {path}")
