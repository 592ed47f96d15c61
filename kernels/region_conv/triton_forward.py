"""Triton forward of the region convolution: an implicit GEMM over the active output rows.

Each program owns a (BLOCK_P active pixels) x (BLOCK_CO output channels) tile. The reduction
runs over the flattened (tap, C_in block) axis, one loop, so the compiler can software-pipeline
the gathers across taps. The input tile is gathered straight from the NHWC map (the padding
taps read 0 through the load mask): no im2col buffer, no full-size temporary, cost ~ P.
Contract: see ``sparsecascade.kernels`` and ``region_conv2d_forward_torch``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_support import triton_interpreting
from .geometry import ConvGeometry
from .triton_common import load_output_pixels, tap_input_rows


def forward_configs() -> list[triton.Config]:
    """Autotune space of the forward kernel (BLOCK_P x BLOCK_CO output tile, BLOCK_CI reduction step).

    Under the interpreter a single small config: benchmarking configs there only burns time.
    Its cost is per loop iteration, not per element, so the tile is the smallest that still
    lets test shapes (P > 32, C = 33) cross block boundaries.
    """
    if triton_interpreting():
        return [triton.Config({"BLOCK_P": 32, "BLOCK_CO": 32, "BLOCK_CI": 32}, num_warps=4, num_stages=1)]
    tiles = [
        # (BLOCK_P, BLOCK_CO, BLOCK_CI, num_warps, num_stages); few configs: a backbone has
        # dozens of distinct layer shapes and each one pays for benchmarking all of them.
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 4, 3),
        (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 16, 4, 2),  # thin layers (C_in = 3 stems, small C_out heads)
    ]
    return [
        triton.Config({"BLOCK_P": bp, "BLOCK_CO": bco, "BLOCK_CI": bci}, num_warps=w, num_stages=s)
        for bp, bco, bci, w, s in tiles
    ]


@triton.jit
def region_conv2d_fwd_kernel(
    x_ptr, w_ptr, idx_ptr, out_ptr,
    bias_ptr, scale_ptr, shift_ptr, res_ptr,
    P, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    res_scale,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    ALLOW_TF32: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_co = tl.program_id(1)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_out
    offs_ci = tl.arange(0, BLOCK_CI)

    # Pixel arithmetic in int32 (the launcher checks N*H*W < 2^31: cheap divisions), element
    # offsets in int64 (N*H*W*C may exceed 2^31).
    pix, n, oy, ox = load_output_pixels(idx_ptr, offs_p, mask_p, H_out, W_out)

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    n_ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    for k in range(0, KH * KW * n_ci_blocks):
        tap = k // n_ci_blocks
        c0 = (k - tap * n_ci_blocks) * BLOCK_CI
        row, valid = tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        ci = c0 + offs_ci
        mask_ci = ci < C_in

        a = tl.load(
            x_ptr + row[:, None] * C_in + ci[None, :],
            mask=valid[:, None] & mask_ci[None, :], other=0.0,
        )
        w_row = (tap * C_in + c0).to(tl.int64) + offs_ci
        b = tl.load(
            w_ptr + w_row[:, None] * C_out + offs_co[None, :],
            mask=mask_ci[:, None] & mask_co[None, :], other=0.0,
        )
        if DOT_FP32:  # the interpreter's dot misreads bf16 operands: give it fp32 (exact products)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if ALLOW_TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")

    # Fused epilogue, same order as the torch twin's apply_epilogue.
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        acc += tl.load(shift_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[None, :]
    out_offs = pix.to(tl.int64)[:, None] * C_out + offs_co[None, :]
    out_mask = mask_p[:, None] & mask_co[None, :]
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
        acc = res + res_scale * acc
    if RELU:  # not tl.maximum: GPU max drops NaN, torch.relu keeps it
        acc = tl.where(acc < 0.0, 0.0, acc)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


# restore_value: the residual may alias ``out`` (in-place residual blocks); a benchmarked
# config must not see the rows an earlier config already wrote.
_region_conv2d_fwd_tuned = triton.autotune(
    configs=forward_configs(), key=["C_in", "C_out", "KH", "KW"], restore_value=["out_ptr"],
)(region_conv2d_fwd_kernel)


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
    allow_tf32: bool = False,
) -> None:
    """Write ``out[idx]`` (NHWC rows) with the epilogue applied; other rows are left untouched.

    ``allow_tf32`` lets fp32 inputs use TF32 tensor cores (about 1e-3 relative error);
    the default is exact fp32 products, as the torch twin computes.
    """
    n_img, height, width, c_in = x.shape
    kh, kw, w_cin, c_out = weight.shape
    assert (kh, kw) == (geometry.kernel_h, geometry.kernel_w) and w_cin == c_in, "weight does not match geometry/x"
    assert (height, width) == (geometry.height, geometry.width), "x does not match geometry"
    h_out, w_out = geometry.out_height, geometry.out_width
    assert out.shape == (n_img, h_out, w_out, c_out), f"out has shape {tuple(out.shape)}"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    assert weight.dtype == x.dtype and out.dtype == x.dtype, "x, weight and out must share a dtype"
    assert x.is_contiguous() and weight.is_contiguous() and out.is_contiguous(), "NHWC contiguous tensors expected"
    assert idx.dtype == torch.int64 and idx.dim() == 1
    assert max(n_img * height * width, n_img * h_out * w_out) < 2**31, "pixel indices must fit in int32"
    if residual is not None:
        assert residual.shape == out.shape and residual.is_contiguous()
    p = idx.numel()
    if p == 0:
        return
    for name, t in (("bias", bias), ("scale", scale), ("shift", shift)):
        if t is not None:
            assert t.numel() == c_out and t.is_contiguous(), f"{name} must be a contiguous ({c_out},) tensor"

    def grid(meta):
        return (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c_out, meta["BLOCK_CO"]))

    dummy = out  # absent optional terms: any pointer, their branch is compiled out
    _region_conv2d_fwd_tuned[grid](
        x, weight, idx, out,
        bias if bias is not None else dummy,
        scale if scale is not None else dummy,
        shift if shift is not None else dummy,
        residual if residual is not None else dummy,
        p, height, width, h_out, w_out, c_in, c_out,
        geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w,
        float(res_scale),
        KH=kh, KW=kw,
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_RESIDUAL=residual is not None, RELU=bool(relu),
        ALLOW_TF32=bool(allow_tf32) and x.dtype == torch.float32,
        DOT_FP32=triton_interpreting(),
    )
