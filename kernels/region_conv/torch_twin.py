"""Torch-native twin of the region convolution kernels: gather - GEMM - scatter on NHWC rows.

The active pixels are processed in chunks of rows so that the gathered receptive fields
(``chunk x taps*C_in``) stay cache-sized and no full-size temporary is ever built: the cost
is proportional to the number of active pixels. Contract: see ``sparsecascade.kernels``.
"""
from __future__ import annotations

import torch

from .cpu_gemm import gemm_rows
from .geometry import ConvGeometry

# Rows per GEMM: as many as fit a budget of gathered receptive fields (measured on a 2-core
# CPU: 1024 rows of a 3x3x256 conv, 9 MB, run 25% faster than 512 and as fast as 4096), so
# that no full-size temporary is built for a large map.
CHUNK_BYTES = 16 << 20
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 4096


def chunk_rows(k: int, element_size: int) -> int:
    """Rows per GEMM chunk for a reduction length ``k`` (= KH*KW*C_in)."""
    return max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, CHUNK_BYTES // max(1, k * element_size)))


def _gather_columns(x_rows: torch.Tensor, idx: torch.Tensor, geometry: ConvGeometry, taps=None):
    """im2col restricted to the output pixels ``idx``: (P, taps*C_in), plus the tap table.

    ``taps``: the tap table of ``idx`` if the caller has it (``(rows (P, taps), padding (Q,))``:
    the input row of every tap, and the flat positions in ``rows`` of the taps in the zero padding).
    """
    if geometry.is_pointwise:
        return x_rows.index_select(0, idx), None
    rows, padding_taps = geometry.tap_table(idx) if taps is None else taps
    cols = x_rows.index_select(0, rows.reshape(-1))
    # Taps in the zero padding were clamped to a real row: zero them (also drops any NaN there,
    # as the dense conv never reads it). index_fill_ writes only the (pixel, tap) rows that fall
    # into the padding (a border band), not the whole chunk as a masked_fill would.
    if padding_taps.numel():
        cols.index_fill_(0, padding_taps, 0)
    return cols.view(idx.numel(), -1), rows


def _chunk_taps(taps, start: int, stop: int, n_taps: int):
    """The rows [start, stop) of a tap table, with its padding positions shifted to the chunk."""
    if taps is None:
        return None
    rows, padding = taps
    if start == 0 and stop == rows.shape[0]:  # one chunk: the whole table
        return taps
    if padding.numel():
        lo, hi = start * n_taps, stop * n_taps
        padding = padding[(padding >= lo) & (padding < hi)] - lo
    return rows[start:stop], padding


def apply_epilogue(acc, *, bias=None, scale=None, shift=None, residual=None, res_scale=1.0, relu=False):
    """The fused epilogue on accumulator rows (fp32, or fp64 for fp64 inputs), ``residual`` aligned
    with them: relu?(residual + res_scale * ((acc + bias) * scale + shift)). Works in place on ``acc``."""
    if bias is not None:
        acc += bias.to(acc.dtype)
    if scale is not None:
        acc *= scale.to(acc.dtype)
    if shift is not None:
        acc += shift.to(acc.dtype)
    if residual is not None:
        if res_scale != 1.0:
            acc *= res_scale
        acc += residual.to(acc.dtype)
    if relu:
        acc.relu_()
    return acc


def fold_affine(weight: torch.Tensor, bias, scale, shift):
    """``(weight * scale, bias * scale + shift)``: a per-channel affine map after a convolution (a
    frozen BatchNorm's ``scale_shift()``) folded into its weights, computed in the weight's dtype.

    ``weight``'s dim 0 is C_out: a (C_out, C_in, KH, KW) conv weight or a (C_out, K) GEMM matrix.
    ``bias``, ``scale``, ``shift`` are (C_out,) or None (absent terms dropped); the bias returned is
    in the weight's dtype, None when there was neither a bias nor a shift. The one fold of the
    package: the torch twin's GEMM, the ops' dense fallback and ``RegionConv2d``'s weights use it.
    """
    if scale is not None:
        weight = weight * scale.to(weight.dtype).view(-1, *([1] * (weight.dim() - 1)))
        if bias is not None:
            bias = bias.to(weight.dtype) * scale.to(weight.dtype)
    if shift is not None:
        bias = shift.to(weight.dtype) if bias is None else bias.to(weight.dtype) + shift.to(weight.dtype)
    return weight, None if bias is None else bias.to(weight.dtype)


def region_conv2d_forward_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    idx: torch.Tensor,
    out: torch.Tensor,
    geometry: ConvGeometry,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    res_scale: float = 1.0,
    relu: bool = False,
    taps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Write ``out[idx]`` (NHWC rows) with the epilogue applied; other rows are left untouched.

    Unlike the Triton launcher, ``weight`` (KH, KW, C_in, C_out) may be any strided view: the
    permuted view of a channels_last (C_out, C_in, KH, KW) weight is read as the contiguous
    (C_out, KH*KW*C_in) matrix it is. ``taps``: the tap table of ``idx`` (``ConvGeometry.tap_table``),
    if the caller cached it.
    """
    c_in, c_out = x.shape[-1], weight.shape[-1]
    x_rows = x.reshape(-1, c_in)
    out_rows = out.view(-1, c_out)
    residual_rows = residual.reshape(-1, c_out) if residual is not None else None
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    w_nk = weight.permute(3, 0, 1, 2).reshape(c_out, -1)  # free for a channels_last weight
    if low_precision:  # accumulate in fp32, as the Triton kernel does
        w_nk = w_nk.float()
    if idx.numel() >= w_nk.shape[1]:
        # Many rows: fold the affine into the (C_out, K) weights once, one GEMM per chunk.
        w_nk, bias = fold_affine(w_nk, bias, scale, shift)
        scale = shift = None
    # Few rows (P < K: a deep layer on a small active set): scaling P output rows is cheaper than
    # scaling K weight rows, so the affine stays in the epilogue.
    bias = None if bias is None else bias.to(w_nk.dtype)
    step = chunk_rows(w_nk.shape[1], 4)
    for start in range(0, idx.numel(), step):
        chunk = idx[start : start + step]
        cols, _ = _gather_columns(x_rows, chunk, geometry, _chunk_taps(taps, start, start + chunk.numel(), geometry.taps))
        cols = cols.float() if low_precision else cols
        acc = gemm_rows(cols, w_nk, bias)
        acc = apply_epilogue(
            acc, scale=scale, shift=shift, res_scale=res_scale, relu=relu,
            residual=None if residual_rows is None else residual_rows.index_select(0, chunk),
        )
        out_rows.index_copy_(0, chunk, acc.to(out.dtype))


def region_conv2d_backward_torch(
    grad_rows: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    idx: torch.Tensor,
    geometry: ConvGeometry,
    *,
    need_input: bool = True,
    need_weight: bool = True,
    taps: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Gradients of the raw region conv from ``grad_rows`` (P, C_out) at the active rows.

    Returns (grad_x (N, H, W, C_in) fp32 or None, grad_weight (KH, KW, C_in, C_out) fp32 or None).
    ``taps``: the tap table of ``idx`` (``ConvGeometry.tap_table``), if the caller cached it.
    """
    n_img, height, width, c_in = x.shape
    c_out = weight.shape[-1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_rows = x.reshape(-1, c_in)
    w_mat = weight.reshape(-1, c_out).to(acc_dtype)
    grad_w = torch.zeros_like(w_mat) if need_weight else None
    # One extra row swallows the contributions of taps that fall into the zero padding.
    spill_row = n_img * height * width
    if taps is None and not geometry.is_pointwise:
        taps = geometry.tap_table(idx)
    grad_x = x.new_zeros((spill_row + 1, c_in), dtype=acc_dtype) if need_input else None
    step = chunk_rows(w_mat.shape[0], 4)
    for start in range(0, idx.numel(), step):
        chunk = idx[start : start + step]
        g = grad_rows[start : start + step].to(acc_dtype)
        chunk_taps = _chunk_taps(taps, start, start + chunk.numel(), geometry.taps)
        if need_weight:
            cols, rows = _gather_columns(x_rows, chunk, geometry, chunk_taps)
            grad_w.addmm_(cols.to(acc_dtype).t(), g)
        elif not geometry.is_pointwise:
            rows = chunk_taps[0]
        if need_input:
            grad_cols = g @ w_mat.t()
            if geometry.is_pointwise:
                grad_x.index_add_(0, chunk, grad_cols)
            else:
                target = rows.reshape(-1)
                if chunk_taps[1].numel():  # taps in the zero padding write to the spill row
                    target = target.index_fill(0, chunk_taps[1], spill_row)
                grad_x.index_add_(0, target, grad_cols.view(-1, c_in))
    if grad_x is not None:
        grad_x = grad_x[:spill_row].view(n_img, height, width, c_in)
    if grad_w is not None:
        grad_w = grad_w.view(weight.shape)
    return grad_x, grad_w
