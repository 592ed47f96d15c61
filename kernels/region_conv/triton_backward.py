"""Triton backward of the region convolution: deterministic gradients of input and weight, cost ~ P.

grad_x, a gather (no atomics): the transposed convolution computed, like the forward, as an
implicit GEMM over rows, here the input rows that some active output reads. The input-side
index is built on the device from ``idx`` without a host sync (``build_input_index``): a dense
output-pixel -> row-of-``grad_rows`` map (-1 where inactive) and the sorted list of touched
input rows (``nonzero_static``, padded with -1 to a static bound). For an input row and a tap,
the kernel looks up the output pixel that tap feeds; its grad row (or zeros) is multiplied by
the weight tap transposed (w[ky, kx]^T: the flipped, transposed kernel of the transposed
convolution) and accumulated over (tap, C_out block) in a fixed order. Each input row is
written by exactly one program. A pointwise conv (1x1, no padding) maps rows one-to-one and
needs no map.

grad_w: each program owns one (tap, C_in block, C_out block) tile of the weight gradient and
reduces x_gathered^T @ g over one contiguous chunk of the P rows. When the tiles alone do not
fill the GPU, SPLIT chunks write fp32 partials to a (SPLIT, ...) buffer that torch sums in a
fixed order; the split is a function of the shapes and the GPU, never of timing.

Tensor cores in every dtype: for fp16/bf16 inputs ``grad_rows`` is rounded to the input dtype
(as cuDNN's backward takes grad_output in the input dtype) and both GEMMs take 16-bit operands
with fp32 accumulation; fp32 follows torch's cuDNN TF32 switch. Under
``torch.use_deterministic_algorithms(True)`` the tiles come from a fixed rule instead of the
autotuner, so two runs, even in two processes, give the same bits.
Contract: see ``sparsecascade.kernels`` and ``region_conv2d_backward_torch``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_support import triton_interpreting
from .geometry import ConvGeometry
from .triton_common import (
    PRECISIONS,
    dot_operands,
    dot_precision,
    interpreter_config,
    known,
    launch,
    make_configs,
    num_sms,
    output_pixel_coords,
    p_bucket,
    precision_class,
    prune,
    tap_input_rows,
    tap_output_rows,
    tile_of,
)
from .triton_forward import all_tiles, weight_strides

INPUT_NAMES = ("BLOCK_M", "BLOCK_CI", "BLOCK_CO")  # rows x input channels (N), output channels (K)
WEIGHT_NAMES = ("BLOCK_CI", "BLOCK_CO", "BLOCK_P")  # input channels (M) x output channels (N), rows (K)

# (block0, block1, block2, num_warps, num_stages), largest tiles first; at most 64 fp32
# accumulators per thread (no spills, see _aot_check).
GRAD_INPUT_TILES = {
    "16bit": [
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (32, 64, 64, 4, 3),
        (128, 32, 32, 4, 4),  # thin C_in
        (64, 32, 32, 4, 3),
    ],
    "tf32": [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 8, 3),  # 4 warps spilled 44 bytes on sm_80 once the operands are rounded to TF32
        (64, 64, 32, 4, 3),
        (32, 64, 32, 4, 3),
        (64, 32, 32, 4, 3),
    ],
    "ieee": [  # FMA products: 16-deep K steps (32 spilled)
        (128, 128, 16, 8, 2),
        (64, 128, 16, 4, 2),
        (64, 64, 16, 4, 2),
        (32, 64, 16, 4, 2),
        (64, 32, 16, 4, 2),
    ],
}
GRAD_WEIGHT_TILES = {
    "16bit": [
        (128, 128, 64, 8, 3),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (32, 64, 64, 4, 3),
        (32, 32, 64, 4, 3),  # thin layers
    ],
    "tf32": [
        (128, 128, 32, 8, 3),
        (64, 128, 32, 4, 3),
        (128, 64, 32, 4, 3),
        (64, 64, 32, 4, 3),
        (32, 32, 32, 4, 3),
    ],
    "ieee": [
        (128, 128, 16, 8, 2),
        (64, 64, 16, 4, 2),
        (32, 64, 16, 4, 2),
        (32, 32, 16, 4, 2),
    ],
}
# The only tiles tried when a channel count is not a multiple of 16 (see the forward's).
GRAD_INPUT_UNALIGNED_TILES = {
    "16bit": [(128, 32, 32, 4, 4), (64, 32, 32, 4, 3), (32, 32, 32, 4, 3)],
    "tf32": [(64, 32, 32, 4, 3), (32, 32, 32, 4, 3)],
    "ieee": [(64, 32, 16, 4, 2), (32, 32, 16, 4, 2)],
}
GRAD_WEIGHT_UNALIGNED_TILES = {
    "16bit": [(32, 64, 64, 4, 3), (32, 32, 64, 4, 3)],
    "tf32": [(32, 32, 32, 4, 3)],
    "ieee": [(32, 32, 16, 4, 2)],
}
# Rows of one grad-weight split: enough K steps to keep the pipeline busy.
MIN_ROWS_PER_SPLIT = 512
SPLIT_ROW_QUANTUM = 128  # chunks are multiples of every BLOCK_P
MAP_BLOCK = 256  # rows per program of the input-map kernel


def grad_input_configs(precision: str = "16bit") -> list[triton.Config]:
    """Autotune space of the grad-input kernel: (BLOCK_M, BLOCK_CI, BLOCK_CO) per precision class."""
    if triton_interpreting():
        return interpreter_config(INPUT_NAMES, "BLOCK_M")
    return make_configs(all_tiles(GRAD_INPUT_TILES, GRAD_INPUT_UNALIGNED_TILES, precision), INPUT_NAMES)


def grad_weight_configs(precision: str = "16bit") -> list[triton.Config]:
    """Autotune space of the grad-weight kernel: (BLOCK_CI, BLOCK_CO, BLOCK_P) per precision class."""
    if triton_interpreting():
        return interpreter_config(WEIGHT_NAMES, "BLOCK_P")
    return make_configs(all_tiles(GRAD_WEIGHT_TILES, GRAD_WEIGHT_UNALIGNED_TILES, precision), WEIGHT_NAMES)


def _unaligned_ok(unaligned: dict, precision: str, names):
    allowed = set(unaligned[precision])
    return lambda c: triton_interpreting() or tile_of(c, names) in allowed


def grad_input_prune(precision: str, *, m: int, c_in: int, c_out: int, configs=None) -> list[triton.Config]:
    configs = grad_input_configs(precision) if configs is None else configs
    return prune(configs, rows=m, rows_name="BLOCK_M", dims={"BLOCK_CI": c_in, "BLOCK_CO": c_out},
                 unaligned_ok=_unaligned_ok(GRAD_INPUT_UNALIGNED_TILES, precision, INPUT_NAMES))


def grad_weight_prune(precision: str, *, rows: int, c_in: int, c_out: int, configs=None) -> list[triton.Config]:
    configs = grad_weight_configs(precision) if configs is None else configs
    return prune(configs, rows=rows, rows_name="BLOCK_P", dims={"BLOCK_CI": c_in, "BLOCK_CO": c_out},
                 unaligned_ok=_unaligned_ok(GRAD_WEIGHT_UNALIGNED_TILES, precision, WEIGHT_NAMES))


def _input_pruner(precision: str):
    def early_config_prune(configs, nargs, **kwargs):
        a = {**nargs, **kwargs}
        return grad_input_prune(precision, m=a["M"], c_in=a["C_in"], c_out=a["C_out"], configs=configs)

    return early_config_prune


def _weight_pruner(precision: str):
    def early_config_prune(configs, nargs, **kwargs):
        a = {**nargs, **kwargs}
        p, per_split = known(a["P"]), known(a["ROWS_PER_SPLIT"])
        rows = None if p is None or per_split is None else min(p, per_split)
        return grad_weight_prune(precision, rows=rows, c_in=a["C_in"], c_out=a["C_out"], configs=configs)

    return early_config_prune


@triton.jit
def region_conv2d_input_map_kernel(
    idx_ptr, pos_ptr, touched_ptr,
    P, H, W, H_out, W_out,
    pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):
    """pos[idx[p]] = p; touched[row] = 1 for every input row a tap of an active pixel reads.
    Every store of a location writes the same value: the result does not depend on the order."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P
    pix = tl.load(idx_ptr + offs, mask=mask, other=0).to(tl.int32)
    n, oy, ox = output_pixel_coords(pix, H_out, W_out)
    tl.store(pos_ptr + pix.to(tl.int64), offs, mask=mask)
    one = tl.full((BLOCK,), 1, dtype=tl.int8)
    for tap in range(0, KH * KW):
        row, valid = tap_input_rows(n, oy, ox, mask, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        tl.store(touched_ptr + row, one, mask=valid)


@triton.jit(do_not_specialize=["M", "P_BUCKET"])
def region_conv2d_bwd_input_kernel(
    g_ptr, w_ptr, rows_ptr, pos_ptr, gx_ptr,
    M, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    stride_wh, stride_ww, stride_wi, stride_wo,
    P_BUCKET,
    KH: tl.constexpr, KW: tl.constexpr, POINTWISE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    EVEN_CI: tl.constexpr, EVEN_CO: tl.constexpr,
):
    """grad_x[rows[m], ci] = sum over (tap, co) of g[pos(m, tap), co] * w[tap, ci, co], where
    pos(m, tap) is the active output row that reads input row rows[m] through that tap.
    ``rows`` is sorted and padded with -1 (POINTWISE: rows = idx and pos(m, 0) = m)."""
    pid_m = tl.program_id(0)
    pid_ci = tl.program_id(1)
    if not POINTWISE:
        # the row list is padded with -1 after the last touched row: whole tiles of padding stop here
        if tl.load(rows_ptr + pid_m * BLOCK_M) < 0:
            return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ci = offs_ci < C_in
    arange_co = tl.arange(0, BLOCK_CO)

    in_row = tl.load(rows_ptr + offs_m, mask=mask_m, other=-1)  # int64
    live = in_row >= 0
    # Pixel arithmetic in int32 (N*H*W < 2^31, checked by the launcher), offsets in int64.
    pix = tl.where(live, in_row, 0).to(tl.int32)
    hw = H * W
    n = pix // hw
    rem = pix - n * hw
    iy = rem // W
    ix = rem - iy * W

    acc = tl.zeros((BLOCK_M, BLOCK_CI), dtype=tl.float32)
    n_co_blocks = tl.cdiv(C_out, BLOCK_CO)
    for k in range(0, KH * KW * n_co_blocks):
        tap = k // n_co_blocks
        co = (k - tap * n_co_blocks) * BLOCK_CO + arange_co
        ky = tap // KW
        kx = tap - ky * KW
        if POINTWISE:
            g_row = offs_m.to(tl.int64)
            valid = mask_m
        else:
            out_pix, inside = tap_output_rows(n, iy, ix, live, tap, H_out, W_out, pad_h, pad_w, dil_h, dil_w, KW)
            pos = tl.load(pos_ptr + out_pix, mask=inside, other=-1)
            valid = pos >= 0
            g_row = pos.to(tl.int64)
        a_ptrs = g_ptr + g_row[:, None] * C_out + co[None, :]
        # w_tap^T [co, ci] = weight[ky, kx, ci, co]
        b_ptrs = w_ptr + (ky * stride_wh + kx * stride_ww) + co[:, None] * stride_wo + offs_ci[None, :] * stride_wi
        if EVEN_CO:
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            if EVEN_CI:
                b = tl.load(b_ptrs)
            else:
                b = tl.load(b_ptrs, mask=mask_ci[None, :], other=0.0)
        else:
            mask_co = co < C_out
            a = tl.load(a_ptrs, mask=valid[:, None] & mask_co[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mask_co[:, None] & mask_ci[None, :], other=0.0)
        a, b = dot_operands(a, b, DOT_FP32, DOT_PRECISION)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    dst = gx_ptr + in_row[:, None] * C_in + offs_ci[None, :]
    tl.store(dst, acc, mask=live[:, None] & mask_ci[None, :])


@triton.jit(do_not_specialize=["P", "P_BUCKET", "ROWS_PER_SPLIT"])
def region_conv2d_bwd_weight_kernel(
    x_ptr, g_ptr, idx_ptr, gw_ptr,
    P, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    ROWS_PER_SPLIT, P_BUCKET,
    KH: tl.constexpr, KW: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
    EVEN_CI: tl.constexpr, EVEN_CO: tl.constexpr,
):
    """gw[split, tap, ci, co] = sum over the split's rows p of x[row(p, tap), ci] * g[p, co]."""
    pid_tc = tl.program_id(0)  # tap * n_ci_blocks + C_in block
    pid_co = tl.program_id(1)
    pid_s = tl.program_id(2)

    n_ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    tap = pid_tc // n_ci_blocks
    offs_ci = (pid_tc - tap * n_ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ci = offs_ci < C_in
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_out
    arange_p = tl.arange(0, BLOCK_P)

    p_start = pid_s * ROWS_PER_SPLIT
    p_end = tl.minimum(P, p_start + ROWS_PER_SPLIT)
    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + arange_p
        mask_p = offs_p < p_end
        pix = tl.load(idx_ptr + offs_p, mask=mask_p, other=0).to(tl.int32)
        n, oy, ox = output_pixel_coords(pix, H_out, W_out)
        row, valid = tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        # x_gathered^T [ci, p]; padding taps read 0
        xt_ptrs = x_ptr + row[None, :] * C_in + offs_ci[:, None]
        g_ptrs = g_ptr + offs_p.to(tl.int64)[:, None] * C_out + offs_co[None, :]
        if EVEN_CI:
            xt = tl.load(xt_ptrs, mask=valid[None, :], other=0.0)
        else:
            xt = tl.load(xt_ptrs, mask=valid[None, :] & mask_ci[:, None], other=0.0)
        if EVEN_CO:
            g = tl.load(g_ptrs, mask=mask_p[:, None], other=0.0)
        else:
            g = tl.load(g_ptrs, mask=mask_p[:, None] & mask_co[None, :], other=0.0)
        xt, g = dot_operands(xt, g, DOT_FP32, DOT_PRECISION)
        acc = tl.dot(xt, g, acc, input_precision=DOT_PRECISION)

    # int64 from a tensor: C_in and C_out may be constexprs (ints equal to 1 are specialised)
    split_stride = tl.full([], KH * KW, tl.int64) * C_in * C_out
    dst = gw_ptr + pid_s * split_stride + (tap * C_in + offs_ci).to(tl.int64)[:, None] * C_out + offs_co[None, :]
    tl.store(dst, acc, mask=mask_ci[:, None] & mask_co[None, :])


_bwd_input_heuristic = triton.heuristics({
    "EVEN_CI": lambda a: a["C_in"] % a["BLOCK_CI"] == 0,
    "EVEN_CO": lambda a: a["C_out"] % a["BLOCK_CO"] == 0,
})(region_conv2d_bwd_input_kernel)
_bwd_weight_heuristic = triton.heuristics({
    "EVEN_CI": lambda a: a["C_in"] % a["BLOCK_CI"] == 0,
    "EVEN_CO": lambda a: a["C_out"] % a["BLOCK_CO"] == 0,
})(region_conv2d_bwd_weight_kernel)

# Both kernels store every element they own (no accumulation into the output buffers), so a
# benchmarked config needs no reset. Key: the layer's shape, the weight layout and the log2(P) bucket.
_bwd_input_tuned = {
    precision: triton.autotune(
        configs=grad_input_configs(precision), key=["C_in", "C_out", "KH", "KW", "POINTWISE", "stride_wi", "stride_wo", "P_BUCKET"],
        prune_configs_by={"early_config_prune": _input_pruner(precision)},
    )(_bwd_input_heuristic)
    for precision in PRECISIONS
}
_bwd_weight_tuned = {
    precision: triton.autotune(
        configs=grad_weight_configs(precision), key=["C_in", "C_out", "KH", "KW", "P_BUCKET"],
        prune_configs_by={"early_config_prune": _weight_pruner(precision)},
    )(_bwd_weight_heuristic)
    for precision in PRECISIONS
}


def build_input_index(idx: torch.Tensor, geometry: ConvGeometry, n_img: int, *,
                      wrap_kernel=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input-side index of an active set, on the device, without a host sync.

    Returns (rows, pos): ``rows`` the sorted input rows (linear in N*H*W) that some active
    output pixel reads, padded with -1 to min(N*H*W, P*taps) entries (N*H*W for a symbolic P
    under torch.compile; the count is not known on the host); ``pos`` (N*H_out*W_out,) int32, the position in ``idx`` of each output pixel, -1
    where inactive. For a pointwise conv, (idx, None). Depends only on (idx, geometry, N):
    callers may build it once per active set and pass it to every layer of that geometry.
    ``wrap_kernel``: as in ``region_conv2d_backward_triton``.
    """
    if geometry.is_pointwise:
        return idx, None
    h_out, w_out = geometry.out_height, geometry.out_width
    n_in = n_img * geometry.height * geometry.width
    p = idx.numel()
    pos = torch.full((n_img * h_out * w_out,), -1, dtype=torch.int32, device=idx.device)
    touched = torch.zeros(n_in, dtype=torch.int8, device=idx.device)
    if known(p) != 0:
        map_kernel = region_conv2d_input_map_kernel if wrap_kernel is None else wrap_kernel(region_conv2d_input_map_kernel)
        map_kernel[(triton.cdiv(p, MAP_BLOCK),)](
            idx, pos, touched, p, geometry.height, geometry.width, h_out, w_out,
            geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w,
            KH=geometry.kernel_h, KW=geometry.kernel_w, BLOCK=MAP_BLOCK,
        )
    # rows touched: at most P*taps; a symbolic P (torch.compile) takes the static bound N*H*W
    bound = max(1, n_in if known(p) is None else min(n_in, p * geometry.taps))
    try:
        rows = torch.nonzero_static(touched, size=bound, fill_value=-1).squeeze(1)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - torch without nonzero_static on this device
        found = touched.nonzero().squeeze(1)  # host sync: the count is data-dependent
        rows = torch.full((bound,), -1, dtype=torch.int64, device=idx.device)
        rows[: found.numel()] = found
    return rows, pos


def grad_weight_split(p, geometry: ConvGeometry, c_in: int, c_out: int, device: torch.device) -> tuple[int, object]:
    """(SPLIT, rows per split) of the grad-weight reduction: enough programs for about two waves
    when the weight tiles alone are few, each split at least MIN_ROWS_PER_SPLIT rows. Independent
    of the autotuned tile, so the summation order is a function of the shapes and the GPU.

    A symbolic P (traced by torch.compile, see ``known``): SPLIT from the other shapes alone (the
    buffer of partials needs a static size) and a symbolic row count per split; splits past the
    last row store zeros."""
    min_rows = 32 if triton_interpreting() else MIN_ROWS_PER_SPLIT  # interpreter tests: small P
    tiles = geometry.taps * triton.cdiv(c_in, 64) * triton.cdiv(c_out, 64)
    waves = max(1, triton.cdiv(2 * num_sms(device), tiles))
    if known(p) is None:
        return waves, triton.cdiv(triton.cdiv(p, waves), SPLIT_ROW_QUANTUM) * SPLIT_ROW_QUANTUM
    split = max(1, min(waves, p // min_rows))
    rows = triton.cdiv(triton.cdiv(max(p, 1), split), SPLIT_ROW_QUANTUM) * SPLIT_ROW_QUANTUM
    return triton.cdiv(max(p, 1), rows), rows


def region_conv2d_backward_triton(
    grad_rows: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    idx: torch.Tensor,
    geometry: ConvGeometry,
    *,
    need_input: bool = True,
    need_weight: bool = True,
    allow_tf32: bool | None = None,
    input_index: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    wrap_kernel=None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the raw region conv from ``grad_rows`` (P, C_out) at the active rows.

    Returns (grad_x (N, H, W, C_in) fp32 or None, grad_weight (KH, KW, C_in, C_out) fp32 or None),
    deterministic (no atomics). ``weight`` may be any strided (KH, KW, C_in, C_out) view.
    ``allow_tf32``: None follows torch's cuDNN TF32 switch on a GPU (as ``F.conv2d``'s backward does).
    For fp16/bf16 ``x``, ``grad_rows`` is rounded to that dtype for the tensor-core GEMMs.
    ``input_index``: ``build_input_index(idx, geometry, N)``, if the caller already has it.
    ``wrap_kernel``: applied to every kernel before its launch (``torch.library.wrap_triton`` inside
    a ``torch.library.triton_op``); None launches them directly.
    """
    n_img, height, width, c_in = x.shape
    kh, kw, w_cin, c_out = weight.shape
    assert (kh, kw) == (geometry.kernel_h, geometry.kernel_w) and w_cin == c_in, "weight does not match geometry/x"
    assert (height, width) == (geometry.height, geometry.width), "x does not match geometry"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    assert weight.dtype == x.dtype, "x and weight must share a dtype"
    assert x.is_contiguous(), "NHWC contiguous x expected"
    assert idx.dtype == torch.int64 and idx.dim() == 1
    h_out, w_out = geometry.out_height, geometry.out_width
    assert max(n_img * height * width, n_img * h_out * w_out) < 2**31, "pixel indices must fit in int32"
    strides = weight_strides(weight)
    p = idx.numel()  # symbolic under torch.compile when idx is compacted in the graph (see known())
    assert grad_rows.dim() == 2 and grad_rows.shape[1] == c_out, f"grad_rows has shape {tuple(grad_rows.shape)}"
    torch._check(grad_rows.shape[0] == p, lambda: f"grad_rows has {grad_rows.shape[0]} rows, idx {p}")
    g = grad_rows.to(x.dtype).contiguous()  # 16-bit operands for the tensor cores; fp32 stays fp32
    precision = dot_precision(x.dtype, allow_tf32, x.device)
    cls = precision_class(x.dtype, precision)
    common = dict(DOT_PRECISION=precision, DOT_FP32=triton_interpreting())
    bucket = p_bucket(p)

    grad_x = grad_w = None
    if need_input:
        grad_x = torch.zeros((n_img, height, width, c_in), dtype=torch.float32, device=x.device)
        if known(p) != 0:
            rows, pos = (input_index if input_index is not None
                         else build_input_index(idx, geometry, n_img, wrap_kernel=wrap_kernel))
            m = rows.numel()

            def grid_x(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c_in, meta["BLOCK_CI"]))

            args = (
                g, weight, rows, pos if pos is not None else rows, grad_x,
                m, height, width, h_out, w_out, c_in, c_out,
                geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w,
                *strides, bucket,
            )
            launch(_bwd_input_tuned[cls], _bwd_input_heuristic, grid_x, args,
                   dict(KH=kh, KW=kw, POINTWISE=pos is None, **common),
                   configs=lambda: grad_input_prune(cls, m=m, c_in=c_in, c_out=c_out),
                   ctas=lambda c: grid_x(c.kwargs)[0] * grid_x(c.kwargs)[1], device=x.device,
                   wrap_kernel=wrap_kernel)
    if need_weight:
        k_rows = kh * kw * c_in
        if known(p) == 0:
            grad_w = torch.zeros((kh, kw, c_in, c_out), dtype=torch.float32, device=x.device)
        else:
            split, rows_per_split = grad_weight_split(p, geometry, c_in, c_out, x.device)
            partial = torch.empty((split, k_rows, c_out), dtype=torch.float32, device=x.device)

            def grid_w(meta):
                return (kh * kw * triton.cdiv(c_in, meta["BLOCK_CI"]), triton.cdiv(c_out, meta["BLOCK_CO"]), split)

            args = (
                x, g, idx, partial,
                p, height, width, h_out, w_out, c_in, c_out,
                geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w,
                rows_per_split, bucket,
            )
            rows = None if known(p) is None else min(p, rows_per_split)
            launch(_bwd_weight_tuned[cls], _bwd_weight_heuristic, grid_w, args,
                   dict(KH=kh, KW=kw, **common),
                   configs=lambda: grad_weight_prune(cls, rows=rows, c_in=c_in, c_out=c_out),
                   ctas=lambda c: grid_w(c.kwargs)[0] * grid_w(c.kwargs)[1] * split, device=x.device,
                   wrap_kernel=wrap_kernel)
            # fixed-order reduction of the partials (a plain store when there is one split)
            grad_w = (partial if split == 1 else partial.sum(0)).view(kh, kw, c_in, c_out)
    return grad_x, grad_w
