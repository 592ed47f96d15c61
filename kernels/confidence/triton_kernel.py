"""Triton confidence threshold: softmax max / first argmax, stop decision and compaction, fused.

Pass 1 (``confidence_rows_kernel``), one program per BLOCK_M rows: max and first argmax over
the class blocks, then sum(exp(l - max)) over them again (the second read of a few KB hits the
cache), confidence = 1 / sum, stop, next_active, and the number of next-active rows of the block.
A torch cumsum over the (M / BLOCK_M) block counts gives each block its output offset; pass 2
(``compact_rows_kernel``) writes the sorted indices of next-active rows with an in-block cumsum.
Contract: see ``sparsecascade.kernels`` and ``confidence_threshold_forward_torch``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements of the logits tile per program: big enough to stream, small enough for registers
# (4096 spilled ~120 bytes per thread on sm_80/sm_90 for row strides that are not multiples of
# 16, e.g. 11 or 40 classes: scalar loads; 2048 compiles spill-free, see _aot_check).
_TILE_ELEMS = 2048
_MAX_BLOCK_C = 128  # wider class counts (ADE20K's 150) loop over class blocks


def launch_params(num_classes: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps) for ``num_classes``; the kernel is memory bound, no autotune."""
    block_c = min(max(triton.next_power_of_2(num_classes), 16), _MAX_BLOCK_C)
    block_m = min(max(_TILE_ELEMS // block_c, 16), 256)
    return block_m, block_c, 4


def confidence_configs() -> list[tuple[int, int, int]]:
    """Every (BLOCK_M, BLOCK_C, num_warps) ``launch_params`` can return (for compile checks)."""
    block_cs = [16 << i for i in range(_MAX_BLOCK_C.bit_length()) if 16 << i <= _MAX_BLOCK_C]
    return [launch_params(c) for c in block_cs]


@triton.jit
def confidence_rows_kernel(
    logits_ptr, active_ptr, labels_ptr, conf_ptr, stop_ptr, next_ptr, count_ptr,
    M, C, stride_m, rho,
    HAS_ACTIVE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    if HAS_ACTIVE:
        act = tl.load(active_ptr + offs_m, mask=mask_m, other=0) != 0
    else:
        act = mask_m
    row_base = offs_m.to(tl.int64) * stride_m
    arange_c = tl.arange(0, BLOCK_C)
    BIG: tl.constexpr = 2147483647

    # Pass over classes 1: running max (NaN-free) and its first index; first NaN index.
    # NaN is handled apart because max/maximum on GPUs drop NaNs while torch.max propagates them.
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_arg = tl.zeros((BLOCK_M,), dtype=tl.int32)
    first_nan = tl.full((BLOCK_M,), BIG, dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + arange_c
        valid = act[:, None] & (cols < C)[None, :]
        v = tl.load(logits_ptr + row_base[:, None] + cols[None, :], mask=valid, other=float("-inf")).to(tl.float32)
        is_nan = v != v
        v = tl.where(is_nan, float("-inf"), v)
        blk_max = tl.max(v, axis=1)
        blk_arg = tl.min(tl.where(valid & (v == blk_max[:, None]), cols[None, :], BIG), axis=1)
        first_nan = tl.minimum(first_nan, tl.min(tl.where(valid & is_nan, cols[None, :], BIG), axis=1))
        take = blk_max > run_max  # strict: an equal max in a later block is not the first argmax
        run_arg = tl.where(take, blk_arg, run_arg)
        run_max = tl.where(take, blk_max, run_max)

    # Pass 2: sum(exp(l - max)); a NaN logit makes it NaN, as in the torch twin.
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + arange_c
        valid = act[:, None] & (cols < C)[None, :]
        v = tl.load(logits_ptr + row_base[:, None] + cols[None, :], mask=valid, other=0.0).to(tl.float32)
        total += tl.sum(tl.where(valid, tl.exp(v - run_max[:, None]), 0.0), axis=1)

    has_nan = first_nan < BIG
    label = tl.where(has_nan, first_nan, run_arg)
    conf = 1.0 / tl.where(act, total, 1.0)  # inactive rows: no 1/0
    label = tl.where(act, label, -1)
    conf = tl.where(act, conf, 0.0)
    stop = act & (conf >= rho)
    nxt = act & (stop == 0)  # a NaN confidence never stops: the row stays active
    tl.store(labels_ptr + offs_m, label.to(tl.int64), mask=mask_m)
    tl.store(conf_ptr + offs_m, conf, mask=mask_m)
    tl.store(stop_ptr + offs_m, stop.to(tl.int8), mask=mask_m)
    tl.store(next_ptr + offs_m, nxt.to(tl.int8), mask=mask_m)
    tl.store(count_ptr + pid, tl.sum(nxt.to(tl.int32), axis=0))


@triton.jit
def compact_rows_kernel(next_ptr, offset_ptr, out_ptr, M, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    flag = tl.load(next_ptr + offs_m, mask=mask_m, other=0).to(tl.int32)
    # exclusive in-block prefix sum + the block's offset: rows land in increasing order
    pos = tl.load(offset_ptr + pid).to(tl.int64) + (tl.cumsum(flag, axis=0) - flag).to(tl.int64)
    tl.store(out_ptr + pos, offs_m.to(tl.int64), mask=mask_m & (flag != 0))


def confidence_threshold_forward_triton(logits: torch.Tensor, rho: float, active: torch.Tensor | None, *,
                                        wrap_kernel=None):
    """Softmax confidence, label and stop decision per pixel row; compacted next active set.

    ``logits`` (M, C) rows; ``active`` (M,) bool or None. Returns (labels int64, confidence fp32,
    stop bool, next_active bool, next_idx int64), as ``confidence_threshold_forward_torch``.
    ``wrap_kernel``: applied to both kernels before their launch (``torch.library.wrap_triton``
    inside a ``torch.library.triton_op``); None launches them directly.
    """
    wrap = wrap_kernel or (lambda kernel: kernel)
    assert logits.dim() == 2, "logits must be (M, C)"
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    m, c = logits.shape
    device = logits.device
    labels = torch.empty(m, dtype=torch.int64, device=device)
    confidence = torch.empty(m, dtype=torch.float32, device=device)
    stop = torch.empty(m, dtype=torch.bool, device=device)
    next_active = torch.empty(m, dtype=torch.bool, device=device)
    if m == 0:
        return labels, confidence, stop, next_active, torch.empty(0, dtype=torch.int64, device=device)
    if active is not None:
        assert active.shape == (m,) and active.dtype == torch.bool, "active must be (M,) bool"
        active_u8 = active.contiguous().view(torch.uint8)
    else:
        active_u8 = stop.view(torch.uint8)  # any pointer: compiled out by HAS_ACTIVE=False

    block_m, block_c, num_warps = launch_params(c)
    n_blocks = triton.cdiv(m, block_m)
    counts = torch.empty(n_blocks, dtype=torch.int32, device=device)
    wrap(confidence_rows_kernel)[(n_blocks,)](
        logits, active_u8, labels, confidence, stop.view(torch.uint8), next_active.view(torch.uint8), counts,
        m, c, logits.stride(0), float(rho),
        HAS_ACTIVE=active is not None, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
    )
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])  # host sync, as nonzero() in the torch twin: the result size is data-dependent
    next_idx = torch.empty(total, dtype=torch.int64, device=device)
    if total > 0:
        offsets = ends - counts
        wrap(compact_rows_kernel)[(n_blocks,)](next_active.view(torch.uint8), offsets, next_idx, m, BLOCK_M=block_m)
    return labels, confidence, stop, next_active, next_idx
