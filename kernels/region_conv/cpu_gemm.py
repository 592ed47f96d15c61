"""The GEMM of the gathered rows on a CPU: the faster of MKL and oneDNN on this processor.

``torch.addmm`` runs MKL's sgemm, which is fast on some processors and picks a slow path on others
(measured on a 2-core AMD EPYC with AVX-512: MKL 208 GFLOP/s, oneDNN 505 GFLOP/s on the same
2048 x 2304 x 256 product; on a 2-core AMD EPYC without AVX-512, MKL 150-160 and oneDNN 130-135).
So the primitive is chosen by measurement, once per process, on a product of the size the LC
backbones run (never by vendor string): ``gemm_rows`` then always takes the winner.
``SPARSECASCADE_CPU_GEMM=mkl|onednn`` pins it.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

GEMM_CHOICES = ("mkl", "onednn")
_chosen: Optional[str] = None


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mkl(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.addmm(bias, cols, w_nk.t()) if bias is not None else cols @ w_nk.t()


def _onednn(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(cols, w_nk, bias, "none", [], "")


_GEMMS: dict[str, Callable] = {"mkl": _mkl, "onednn": _onednn}


def _measure() -> str:
    """Time both primitives on a (1024 x 2304) x (2304 x 256) product (a 3x3 256->256 layer on
    1024 active pixels), interleaved, best of 3; about 60 ms once per process."""
    if not _onednn_available():
        return "mkl"
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(1024, 2304, generator=gen)
    w_nk = torch.randn(256, 2304, generator=gen)
    bias = torch.randn(256, generator=gen)
    best = {name: float("inf") for name in GEMM_CHOICES}
    for _ in range(4):  # the first round warms both up
        for name in GEMM_CHOICES:
            start = time.perf_counter()
            _GEMMS[name](cols, w_nk, bias)
            best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def chosen_gemm() -> str:
    """"mkl" or "onednn": the primitive ``gemm_rows`` runs fp32 products with in this process."""
    global _chosen
    if _chosen is None:
        pinned = os.environ.get("SPARSECASCADE_CPU_GEMM", "")
        if pinned and pinned not in GEMM_CHOICES:
            raise ValueError(f"SPARSECASCADE_CPU_GEMM: expected one of {GEMM_CHOICES}, got {pinned!r}")
        if pinned == "onednn" and not _onednn_available():
            raise RuntimeError("SPARSECASCADE_CPU_GEMM=onednn, but this torch build has no oneDNN (mkldnn)")
        _chosen = pinned or _measure()
    return _chosen


def gemm_rows(cols: torch.Tensor, w_nk: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``cols @ w_nk.t() + bias``: (P, K) rows times a contiguous (C_out, K) weight, on a CPU through
    the primitive measured fastest here (fp32); other dtypes and devices through ``torch.addmm``."""
    if cols.device.type == "cpu" and cols.dtype == torch.float32 and chosen_gemm() == "onednn":
        return _onednn(cols, w_nk.contiguous(), bias)
    return _mkl(cols, w_nk, bias)
