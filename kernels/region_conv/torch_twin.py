"""Torch-native twin of the region convolution kernels: gather - GEMM - scatter on NHWC rows.

The active pixels are processed in chunks of rows so that the gathered receptive fields
(``chunk x taps*C_in``) stay cache-sized and no full-size temporary is ever built: the cost
is proportional to the number of active pixels. Contract: see ``sparsecascade.kernels``.
"""
from __future__ import annotations

import torch

from .geometry import ConvGeometry

# Rows per GEMM: as many as fit a budget of gathered receptive fields (measured on a 2-core
# CPU: 1024 rows of a 3x3x256 conv, 9 MB, run 25% faster than 512 and as fast as 4096), so
# that no full-size temporary is built for a large map.
CHUNK_BYTES = 16 << 20
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 4096


def chunk_rows(k: int, element_size: int) -> int:
    """Rows per GEMM chunk for a reduction length ``k`` (= KH*KW*C_in)."""
    return max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, CHUNK_BYTES // max(1, k * element_size)))


def _gather_columns(x_rows: torch.Tensor, idx: torch.Tensor, geometry: ConvGeometry):
    """im2col restricted to the output pixels ``idx``: (P, taps*C_in), plus the tap table."""
    if geometry.is_pointwise:
        return x_rows.index_select(0, idx), None, None
    rows, valid = geometry.tap_rows(idx)
    cols = x_rows.index_select(0, rows.reshape(-1)).view(idx.numel(), geometry.taps, x_rows.shape[1])
    # Taps in the zero padding were clamped to a real row: zero them (also drops any NaN there,
    # as the dense conv never reads it). Interior chunks, the common case, skip the pass.
    # index_fill_ writes only the (pixel, tap) rows that fall into the padding (a border band),
    # not the whole chunk as a masked_fill would.
    padding_taps = (~valid).reshape(-1).nonzero().squeeze(1)
    if padding_taps.numel():
        cols.view(-1, x_rows.shape[1]).index_fill_(0, padding_taps, 0)
    return cols.view(idx.numel(), -1), rows, valid


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


def fold_affine(w_mat: torch.Tensor, bias, scale, shift):
    """(w * scale, (bias * scale + shift)) for a (K, C_out) weight matrix: the per-channel affine of a
    frozen BatchNorm moved into the GEMM, so that the epilogue is one fused addmm."""
    if scale is not None:
        w_mat = w_mat * scale.to(w_mat.dtype)
        if bias is not None:
            bias = bias.to(w_mat.dtype) * scale.to(w_mat.dtype)
    if shift is not None:
        bias = shift.to(w_mat.dtype) if bias is None else bias.to(w_mat.dtype) + shift.to(w_mat.dtype)
    return w_mat, None if bias is None else bias.to(w_mat.dtype)


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
) -> None:
    """Write ``out[idx]`` (NHWC rows) with the epilogue applied; other rows are left untouched.

    Unlike the Triton launcher, ``weight`` (KH, KW, C_in, C_out) may be any strided view: the
    permuted view of a channels_last (C_out, C_in, KH, KW) weight is used without a copy.
    """
    c_in, c_out = x.shape[-1], weight.shape[-1]
    x_rows = x.reshape(-1, c_in)
    out_rows = out.view(-1, c_out)
    residual_rows = residual.reshape(-1, c_out) if residual is not None else None
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    w_mat = weight.reshape(-1, c_out)
    if low_precision:  # accumulate in fp32, as the Triton kernel does
        w_mat = w_mat.float()
    if idx.numel() >= w_mat.shape[0]:
        # Many rows: fold the affine into the (K, C_out) weights once, one addmm per chunk.
        w_mat, bias = fold_affine(w_mat, bias, scale, shift)
        scale = shift = None
    # Few rows (P < K: a deep layer on a small active set): scaling P output rows is cheaper than
    # scaling K weight rows, so the affine stays in the epilogue.
    step = chunk_rows(w_mat.shape[0], 4)
    for start in range(0, idx.numel(), step):
        chunk = idx[start : start + step]
        cols, _, _ = _gather_columns(x_rows, chunk, geometry)
        cols = cols.float() if low_precision else cols
        acc = torch.addmm(bias.to(w_mat.dtype), cols, w_mat) if bias is not None else cols @ w_mat
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
):
    """Gradients of the raw region conv from ``grad_rows`` (P, C_out) at the active rows.

    Returns (grad_x (N, H, W, C_in) fp32 or None, grad_weight (KH, KW, C_in, C_out) fp32 or None).
    """
    n_img, height, width, c_in = x.shape
    c_out = weight.shape[-1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_rows = x.reshape(-1, c_in)
    w_mat = weight.reshape(-1, c_out).to(acc_dtype)
    grad_w = torch.zeros_like(w_mat) if need_weight else None
    # One extra row swallows the contributions of taps that fall into the zero padding.
    spill_row = n_img * height * width
    grad_x = x.new_zeros((spill_row + 1, c_in), dtype=acc_dtype) if need_input else None
    step = chunk_rows(w_mat.shape[0], 4)
    for start in range(0, idx.numel(), step):
        chunk = idx[start : start + step]
        g = grad_rows[start : start + step].to(acc_dtype)
        if need_weight:
            cols, rows, valid = _gather_columns(x_rows, chunk, geometry)
            grad_w.addmm_(cols.to(acc_dtype).t(), g)
        elif not geometry.is_pointwise:
            rows, valid = geometry.tap_rows(chunk)
        if need_input:
            grad_cols = g @ w_mat.t()
            if geometry.is_pointwise:
                grad_x.index_add_(0, chunk, grad_cols)
            else:
                target = rows.masked_fill(~valid, spill_row).reshape(-1)
                grad_x.index_add_(0, target, grad_cols.view(-1, c_in))
    if grad_x is not None:
        grad_x = grad_x[:spill_row].view(n_img, height, width, c_in)
    if grad_w is not None:
        grad_w = grad_w.view(weight.shape)
    return grad_x, grad_w
