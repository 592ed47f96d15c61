"""The GEMM of the gathered rows on a CPU: the faster of MKL and oneDNN on this processor.

``torch.addmm`` runs MKL's sgemm, which is fast on some processors and picks a slow path on others
(measured on a 2-core AMD EPYC with AVX-512: MKL 208 GFLOP/s, oneDNN 505 GFLOP/s on the same
2048 x 2304 x 256 product; on a 2-core AMD EPYC without AVX-512, MKL 150-160 and oneDNN 130-135).
So the primitive is chosen by measurement, once per process, on products of the sizes the LC
backbones run, small and large apart (never by vendor string): ``gemm_rows`` then takes the winner.
``SPARSECASCADE_CPU_GEMM=mkl|onednn`` pins it.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

GEMM_CHOICES = ("mkl", "onednn")
# Products below this many multiply-accumulates are "small": there a primitive's fixed cost per call
# (oneDNN sets up its kernel for the shapes) can outweigh its speed, so each size class gets its own winner.
SMALL_MACS = 1 << 22
_chosen: Optional[dict] = None  # {"small": name, "large": name}


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mkl(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.addmm(bias, cols, w_nk.t()) if bias is not None else cols @ w_nk.t()


def _onednn(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(cols, w_nk, bias, "none", [], "")


_GEMMS: dict[str, Callable] = {"mkl": _mkl, "onednn": _onednn}


def _faster(p: int, k: int, n: int, rounds: int) -> str:
    """The faster primitive on a (p x k) x (k x n) product, interleaved, best of ``rounds`` - 1."""
    gen = torch.Generator().manual_seed(0)
    cols, w_nk, bias = torch.randn(p, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    best = {name: float("inf") for name in GEMM_CHOICES}
    for round_ in range(rounds):  # the first round warms both up
        for name in GEMM_CHOICES:
            start = time.perf_counter()
            _GEMMS[name](cols, w_nk, bias)
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def _measure() -> dict:
    """Each size class's winner: a 3x3 256->256 layer on 1024 active pixels (large), a 3x3 32->32
    layer on 256 (small); about 60 ms once per process."""
    if not _onednn_available():
        return {"small": "mkl", "large": "mkl"}
    return {"large": _faster(1024, 2304, 256, 4), "small": _faster(256, 288, 32, 12)}


def chosen_gemm(macs: int = SMALL_MACS) -> str:
    """"mkl" or "onednn": the primitive ``gemm_rows`` runs an fp32 product of ``macs`` MACs with here."""
    global _chosen
    if _chosen is None:
        pinned = os.environ.get("SPARSECASCADE_CPU_GEMM", "")
        if pinned and pinned not in GEMM_CHOICES:
            raise ValueError(f"SPARSECASCADE_CPU_GEMM: expected one of {GEMM_CHOICES}, got {pinned!r}")
        if pinned == "onednn" and not _onednn_available():
            raise RuntimeError("SPARSECASCADE_CPU_GEMM=onednn, but this torch build has no oneDNN (mkldnn)")
        _chosen = {"small": pinned, "large": pinned} if pinned else _measure()
    return _chosen["small" if macs < SMALL_MACS else "large"]


def gemm_rows(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``cols @ w_nk.t() + bias``: (P, K) rows times a (C_out, K) weight, on a CPU through the
    primitive measured fastest here for a product of this size (fp32); other dtypes and devices
    through ``torch.addmm``."""
    if cols.device.type == "cpu" and cols.dtype == torch.float32:
        if chosen_gemm(cols.shape[0] * cols.shape[1] * w_nk.shape[0]) == "onednn":
            return _onednn(cols, w_nk.contiguous(), bias)
    return _mkl(cols, w_nk, bias)
