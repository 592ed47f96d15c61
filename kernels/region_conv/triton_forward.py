"""Triton forward of the region convolution: an implicit GEMM over the active output rows.

Each program owns a (BLOCK_P active pixels) x (BLOCK_CO output channels) tile. The reduction
runs over the flattened (tap, C_in block) axis, one loop, so the compiler can software-pipeline
the gathers across taps (cp.async on sm_80, wgmma from shared memory on sm_90). The input tile
is gathered straight from the NHWC map (the padding taps read 0 through the load mask): no
im2col buffer, no full-size temporary, cost ~ P.

Tensor cores in every dtype: fp16/bf16 operands go into ``tl.dot`` as they are (fp32
accumulation); fp32 operands use TF32 when torch's cuDNN switch allows it (as ``F.conv2d``
does on a GPU), else exact fp32 FMAs. The weight is read through its strides: the permuted view
of a (C_out, C_in, KH, KW) weight is used without a copy (fastest when C_in or C_out has
stride 1, e.g. a channels_last weight or a contiguous (KH, KW, C_in, C_out) one).
Contract: see ``sparsecascade.kernels`` and ``region_conv2d_forward_torch``.
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
    output_pixel_coords,
    p_bucket,
    precision_class,
    prune,
    tap_input_rows,
    tile_of,
)

NAMES = ("BLOCK_P", "BLOCK_CO", "BLOCK_CI")

# (BLOCK_P, BLOCK_CO, BLOCK_CI, num_warps, num_stages), largest tiles first. Few configs per
# class: a backbone has dozens of distinct layer shapes, each pays for benchmarking all of them
# (once per log2(P) bucket). At most 64 fp32 accumulators per thread: no spills (see _aot_check).
FORWARD_TILES = {
    # fp16 / bf16: 64-deep K steps (128 B rows: full cp.async / wgmma swizzle), 96 KB of
    # shared memory at 3 stages for the biggest tile (A100: 163 KB, H100: 227 KB per block)
    "16bit": [
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (32, 64, 64, 4, 3),   # batch 1, a sparse stage: few rows, more programs
        (128, 32, 32, 4, 4),  # thin C_out (heads, 1x1 projections)
        (64, 32, 32, 4, 3),   # thin layers
    ],
    # fp32 as TF32: 32-deep K steps (same bytes per row), 4-warp variants
    "tf32": [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 4, 3),
        (64, 64, 32, 4, 3),
        (32, 64, 32, 4, 3),
        (64, 32, 32, 4, 3),
    ],
    # exact fp32 (TF32 switched off): FMA products, no tensor cores; 16-deep K steps (32 spilled)
    "ieee": [
        (128, 128, 16, 8, 2),
        (64, 64, 16, 4, 2),
        (32, 64, 16, 4, 2),
        (64, 32, 16, 4, 2),
    ],
}
# The only tiles tried when a channel count is not a multiple of 16 (a 21-class head, C_in = 3):
# element-wise loads need an address per element, and bigger tiles spill (see _aot_check).
FORWARD_UNALIGNED_TILES = {
    "16bit": [(128, 32, 32, 4, 4), (64, 32, 32, 4, 3), (32, 32, 32, 4, 3)],
    "tf32": [(64, 32, 32, 4, 3), (32, 32, 32, 4, 3)],
    "ieee": [(64, 32, 16, 4, 2), (32, 32, 16, 4, 2)],
}


def all_tiles(tiles: dict, unaligned: dict, precision: str) -> list[tuple]:
    return tiles[precision] + [t for t in unaligned[precision] if t not in tiles[precision]]


def forward_configs(precision: str = "16bit") -> list[triton.Config]:
    """Autotune space of the forward kernel for one precision class ("16bit", "tf32", "ieee").

    Under the interpreter a single small config: benchmarking configs there only burns time.
    """
    if triton_interpreting():
        return interpreter_config(NAMES, "BLOCK_P")
    return make_configs(all_tiles(FORWARD_TILES, FORWARD_UNALIGNED_TILES, precision), NAMES)


def unaligned_ok(precision: str):
    """Predicate: may this forward config run a layer whose channels are not multiples of 16?"""
    allowed = set(FORWARD_UNALIGNED_TILES[precision])
    return lambda c: triton_interpreting() or tile_of(c, NAMES) in allowed


def forward_prune(precision: str, *, p: int, c_in: int, c_out: int, configs=None) -> list[triton.Config]:
    configs = forward_configs(precision) if configs is None else configs
    return prune(configs, rows=p, rows_name="BLOCK_P", dims={"BLOCK_CO": c_out, "BLOCK_CI": c_in},
                 unaligned_ok=unaligned_ok(precision))


def _pruner(precision: str):
    def early_config_prune(configs, nargs, **kwargs):
        a = {**nargs, **kwargs}
        return forward_prune(precision, p=a["P"], c_in=a["C_in"], c_out=a["C_out"], configs=configs)

    return early_config_prune


@triton.jit(do_not_specialize=["P", "P_BUCKET"])
def region_conv2d_fwd_kernel(
    x_ptr, w_ptr, idx_ptr, out_ptr,
    bias_ptr, scale_ptr, shift_ptr, res_ptr,
    P, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    stride_wh, stride_ww, stride_wi, stride_wo,
    res_scale, P_BUCKET,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    EVEN_CI: tl.constexpr, EVEN_CO: tl.constexpr,
):
    # P_BUCKET (ceil(log2(P))) only keys the autotuner.
    pid_p = tl.program_id(0)
    pid_co = tl.program_id(1)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_out
    offs_ci = tl.arange(0, BLOCK_CI)

    # Pixel arithmetic in int32 (the launcher checks N*H*W < 2^31: cheap divisions), element
    # offsets in int64 (N*H*W*C may exceed 2^31).
    pix = tl.load(idx_ptr + offs_p, mask=mask_p, other=0).to(tl.int32)
    n, oy, ox = output_pixel_coords(pix, H_out, W_out)

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    n_ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    for k in range(0, KH * KW * n_ci_blocks):
        tap = k // n_ci_blocks
        c0 = (k - tap * n_ci_blocks) * BLOCK_CI
        row, valid = tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        ci = c0 + offs_ci
        ky = tap // KW
        w_base = ky * stride_wh + (tap - ky * KW) * stride_ww
        a_ptrs = x_ptr + row[:, None] * C_in + ci[None, :]
        b_ptrs = w_ptr + w_base + ci[:, None] * stride_wi + offs_co[None, :] * stride_wo
        if EVEN_CI:  # full channel blocks: the only mask is the row's (padding taps, tile tail)
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            if EVEN_CO:
                b = tl.load(b_ptrs)
            else:
                b = tl.load(b_ptrs, mask=mask_co[None, :], other=0.0)
        else:
            mask_ci = ci < C_in
            a = tl.load(a_ptrs, mask=valid[:, None] & mask_ci[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mask_ci[:, None] & mask_co[None, :], other=0.0)
        a, b = dot_operands(a, b, DOT_FP32, DOT_PRECISION)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # Fused epilogue: (acc + bias) * scale + shift as acc * scale + (bias * scale + shift), the
    # affine folded per channel first (as the torch twin folds it into the weights): two
    # per-column vectors live in registers instead of three (the 128x128 TF32 tile spilled).
    if HAS_SCALE:
        s = tl.load(scale_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)
    if HAS_BIAS or HAS_SHIFT:
        t = tl.zeros((BLOCK_CO,), dtype=tl.float32)
        if HAS_BIAS:
            t = tl.load(bias_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)
            if HAS_SCALE:
                t = t * s
        if HAS_SHIFT:
            t += tl.load(shift_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)
    if HAS_SCALE:
        acc = acc * s[None, :]
    if HAS_BIAS or HAS_SHIFT:
        acc = acc + t[None, :]
    # per-row int64 base plus the tile's column arange: per-element offsets fold into the
    # load/store immediates instead of one 64-bit address per element
    out_offs = (pix.to(tl.int64) * C_out + pid_co * BLOCK_CO)[:, None] + tl.arange(0, BLOCK_CO)[None, :]
    out_mask = mask_p[:, None] & mask_co[None, :]
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
        acc = res + res_scale * acc
    if RELU:  # not tl.maximum: GPU max drops NaN, torch.relu keeps it
        acc = tl.where(acc < 0.0, 0.0, acc)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


# order: autotune, then heuristics, then jit. EVEN_*: channel counts that the blocks divide.
_fwd_heuristic = triton.heuristics({
    "EVEN_CI": lambda a: a["C_in"] % a["BLOCK_CI"] == 0,
    "EVEN_CO": lambda a: a["C_out"] % a["BLOCK_CO"] == 0,
})(region_conv2d_fwd_kernel)

# One autotuner per precision class (own config list, own cache). Key: the layer's shape, the
# weight layout (which channel axis has stride 1) and the log2(P) bucket, not P itself: a
# layer re-tunes once per bucket (the dtype is appended by Triton). restore_value: the residual may alias ``out``
# (in-place residual blocks); a benchmarked config must not see the rows an earlier config wrote.
_fwd_tuned = {
    precision: triton.autotune(
        configs=forward_configs(precision), key=["C_in", "C_out", "KH", "KW", "stride_wi", "stride_wo", "P_BUCKET"],
        prune_configs_by={"early_config_prune": _pruner(precision)}, restore_value=["out_ptr"],
    )(_fwd_heuristic)
    for precision in PRECISIONS
}


def weight_strides(weight: torch.Tensor) -> tuple[int, int, int, int]:
    """(KH, KW, C_in, C_out) strides of a weight view; checked to address < 2^31 elements (int32)."""
    assert weight.dim() == 4 and all(s >= 0 for s in weight.stride()), "weight must be a (KH, KW, C_in, C_out) view"
    span = sum((d - 1) * s for d, s in zip(weight.shape, weight.stride()))
    assert span < 2**31, "weight offsets must fit in int32"
    return tuple(weight.stride())


def region_conv2d_forward_triton(
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
    allow_tf32: bool | None = None,
    wrap_kernel=None,
) -> None:
    """Write ``out[idx]`` (NHWC rows) with the epilogue applied; other rows are left untouched.

    ``weight`` (KH, KW, C_in, C_out) may be any strided view (read through its strides).
    ``allow_tf32``: fp32 products on TF32 tensor cores (about 1e-3 relative error); None (default)
    follows torch's cuDNN switch at call time on a GPU, as ``F.conv2d`` does (exact on a CPU, under the
    interpreter); False: exact fp32 products.
    ``wrap_kernel``: applied to the kernel before its launch (``torch.library.wrap_triton`` inside a
    ``torch.library.triton_op``); None launches it directly.
    """
    n_img, height, width, c_in = x.shape
    kh, kw, w_cin, c_out = weight.shape
    assert (kh, kw) == (geometry.kernel_h, geometry.kernel_w) and w_cin == c_in, "weight does not match geometry/x"
    assert (height, width) == (geometry.height, geometry.width), "x does not match geometry"
    h_out, w_out = geometry.out_height, geometry.out_width
    assert out.shape == (n_img, h_out, w_out, c_out), f"out has shape {tuple(out.shape)}"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    assert weight.dtype == x.dtype and out.dtype == x.dtype, "x, weight and out must share a dtype"
    assert x.is_contiguous() and out.is_contiguous(), "NHWC contiguous x and out expected"
    assert idx.dtype == torch.int64 and idx.dim() == 1
    assert max(n_img * height * width, n_img * h_out * w_out) < 2**31, "pixel indices must fit in int32"
    strides = weight_strides(weight)
    if residual is not None:
        assert residual.shape == out.shape and residual.is_contiguous()
    p = idx.numel()  # symbolic under torch.compile when idx is compacted in the graph (see known())
    if known(p) == 0:
        return
    for name, t in (("bias", bias), ("scale", scale), ("shift", shift)):
        if t is not None:
            assert t.numel() == c_out and t.is_contiguous(), f"{name} must be a contiguous ({c_out},) tensor"

    if bias is not None and shift is not None:
        # (acc + b) * s + t == acc * s + (b * s + t): one additive vector instead of two, folded
        # here on C_out elements (the kernel's epilogue spilled with all five terms at 128x128 TF32)
        folded = bias.float() * scale.float() if scale is not None else bias.float()
        shift, bias = (folded + shift.float()).contiguous(), None

    precision = dot_precision(x.dtype, allow_tf32, x.device)
    cls = precision_class(x.dtype, precision)

    def grid(meta):
        return (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c_out, meta["BLOCK_CO"]))

    dummy = out  # absent optional terms: any pointer, their branch is compiled out
    args = (
        x, weight, idx, out,
        bias if bias is not None else dummy,
        scale if scale is not None else dummy,
        shift if shift is not None else dummy,
        residual if residual is not None else dummy,
        p, height, width, h_out, w_out, c_in, c_out,
        geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w,
        *strides,
        float(res_scale), p_bucket(p),
    )
    kwargs = dict(
        KH=kh, KW=kw,
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, RELU=bool(relu),
        DOT_PRECISION=precision, DOT_FP32=triton_interpreting(),
    )
    launch(_fwd_tuned[cls], _fwd_heuristic, grid, args, kwargs,
           configs=lambda: forward_prune(cls, p=p, c_in=c_in, c_out=c_out),
           ctas=lambda c: grid(c.kwargs)[0] * grid(c.kwargs)[1], device=x.device, wrap_kernel=wrap_kernel)
