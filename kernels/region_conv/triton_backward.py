"""Triton backward of the region convolution: gradients of input and weight from the active rows.

grad_x: each program takes (BLOCK_P active rows) x (BLOCK_CI input channels) and, tap by tap,
computes g @ w_tap^T, then scatters it with fp32 atomics to the input pixel the tap read
(neighbouring output pixels share input pixels). A pointwise conv maps rows one-to-one, so it
stores instead.
grad_w: each program owns one (tap, C_in block, C_out block) tile of the weight gradient and
reduces x_gathered^T @ g over its share of the P rows; SPLIT_P programs (the grid's third axis)
share a tile and meet in fp32 atomics, so small layers with many rows still fill the GPU.
Both cost ~ P. Contract: see ``sparsecascade.kernels`` and ``region_conv2d_backward_torch``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_support import triton_interpreting
from .geometry import ConvGeometry
from .triton_common import load_output_pixels, tap_input_rows


def _configs(tiles: list[tuple[int, int, int, int, int]], names: tuple[str, str, str]) -> list[triton.Config]:
    return [triton.Config(dict(zip(names, t[:3])), num_warps=t[3], num_stages=t[4]) for t in tiles]


def grad_input_configs() -> list[triton.Config]:
    """Autotune space of the grad-input kernel: (BLOCK_P, BLOCK_CI, BLOCK_CO, num_warps, num_stages)."""
    names = ("BLOCK_P", "BLOCK_CI", "BLOCK_CO")
    if triton_interpreting():  # one config: no benchmarking, few interpreted loop iterations
        return _configs([(32, 32, 32, 4, 1)], names)
    return _configs(
        [
            (64, 64, 32, 4, 3),
            (128, 64, 32, 8, 3),
            (64, 32, 32, 4, 3),
            (32, 32, 32, 4, 2),  # few rows or thin layers
        ],
        names,
    )


def grad_weight_configs() -> list[triton.Config]:
    """Autotune space of the grad-weight kernel: (BLOCK_CI, BLOCK_CO, BLOCK_P, num_warps, num_stages)."""
    names = ("BLOCK_CI", "BLOCK_CO", "BLOCK_P")
    if triton_interpreting():
        return _configs([(32, 32, 32, 4, 1)], names)
    return _configs(
        [
            (64, 64, 32, 4, 3),
            (128, 128, 32, 8, 3),
            (32, 64, 64, 4, 3),
            (32, 32, 64, 4, 2),  # thin layers (C_in = 3 stems)
        ],
        names,
    )


@triton.jit
def region_conv2d_bwd_input_kernel(
    g_ptr, w_ptr, idx_ptr, gx_ptr,
    P, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    ATOMIC: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_ci = tl.program_id(1)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ci = offs_ci < C_in
    arange_co = tl.arange(0, BLOCK_CO)

    # Pixel arithmetic in int32 (the launcher checks N*H*W < 2^31), element offsets in int64.
    _, n, oy, ox = load_output_pixels(idx_ptr, offs_p, mask_p, H_out, W_out)
    g_rows = offs_p.to(tl.int64) * C_out

    for tap in range(0, KH * KW):
        row, valid = tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        # w_tap^T[co, ci] = weight[tap, ci, co]
        w_cols = (tap * C_in + offs_ci).to(tl.int64) * C_out

        acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
        for co0 in range(0, C_out, BLOCK_CO):
            co = co0 + arange_co
            mask_co = co < C_out
            g = tl.load(g_ptr + g_rows[:, None] + co[None, :], mask=mask_p[:, None] & mask_co[None, :], other=0.0)
            wt = tl.load(w_ptr + w_cols[None, :] + co[:, None], mask=mask_co[:, None] & mask_ci[None, :], other=0.0)
            if ALLOW_TF32:
                acc = tl.dot(g.to(tl.float32), wt.to(tl.float32), acc, input_precision="tf32")
            else:
                acc = tl.dot(g.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")

        dst = gx_ptr + row[:, None] * C_in + offs_ci[None, :]
        dst_mask = valid[:, None] & mask_ci[None, :]
        if ATOMIC:
            tl.atomic_add(dst, acc, mask=dst_mask, sem="relaxed")
        else:
            tl.store(dst, acc, mask=dst_mask)


@triton.jit
def region_conv2d_bwd_weight_kernel(
    x_ptr, g_ptr, idx_ptr, gw_ptr,
    P, H, W, H_out, W_out, C_in, C_out,
    pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_tc = tl.program_id(0)  # tap * n_ci_blocks + C_in block
    pid_co = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_split = tl.num_programs(2)

    n_ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    tap = pid_tc // n_ci_blocks
    offs_ci = (pid_tc - tap * n_ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ci = offs_ci < C_in
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_out

    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    for p0 in range(pid_s * BLOCK_P, P, n_split * BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        _, n, oy, ox = load_output_pixels(idx_ptr, offs_p, mask_p, H_out, W_out)
        row, valid = tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW)
        # x_gathered^T [ci, p]; padding taps read 0
        xt = tl.load(x_ptr + row[None, :] * C_in + offs_ci[:, None], mask=valid[None, :] & mask_ci[:, None], other=0.0)
        g = tl.load(
            g_ptr + offs_p.to(tl.int64)[:, None] * C_out + offs_co[None, :],
            mask=mask_p[:, None] & mask_co[None, :], other=0.0,
        )
        if ALLOW_TF32:
            acc = tl.dot(xt.to(tl.float32), g.to(tl.float32), acc, input_precision="tf32")
        else:
            acc = tl.dot(xt.to(tl.float32), g.to(tl.float32), acc, input_precision="ieee")

    dst = gw_ptr + (tap * C_in + offs_ci).to(tl.int64)[:, None] * C_out + offs_co[None, :]
    tl.atomic_add(dst, acc, mask=mask_ci[:, None] & mask_co[None, :], sem="relaxed")


# Both kernels accumulate into zero-initialised buffers: benchmarking a config must start from 0.
_bwd_input_tuned = triton.autotune(
    configs=grad_input_configs(), key=["C_in", "C_out", "KH", "KW"], reset_to_zero=["gx_ptr"],
)(region_conv2d_bwd_input_kernel)
_bwd_weight_tuned = triton.autotune(
    configs=grad_weight_configs(), key=["C_in", "C_out", "KH", "KW"], reset_to_zero=["gw_ptr"],
)(region_conv2d_bwd_weight_kernel)


def _target_programs(device: torch.device) -> int:
    """About two waves of programs: enough to fill the GPU, few enough to keep atomics rare."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: small, but > 1 so that tests exercise the split reduction


def region_conv2d_backward_triton(
    grad_rows: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    idx: torch.Tensor,
    geometry: ConvGeometry,
    *,
    need_input: bool = True,
    need_weight: bool = True,
    allow_tf32: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the raw region conv from ``grad_rows`` (P, C_out) at the active rows.

    Returns (grad_x (N, H, W, C_in) fp32 or None, grad_weight (KH, KW, C_in, C_out) fp32 or None).
    ``allow_tf32`` lets the fp32 GEMMs use TF32 tensor cores; by default they are exact fp32.
    """
    n_img, height, width, c_in = x.shape
    kh, kw, w_cin, c_out = weight.shape
    assert (kh, kw) == (geometry.kernel_h, geometry.kernel_w) and w_cin == c_in, "weight does not match geometry/x"
    assert (height, width) == (geometry.height, geometry.width), "x does not match geometry"
    assert x.is_contiguous() and weight.is_contiguous(), "NHWC contiguous tensors expected"
    assert idx.dtype == torch.int64 and idx.dim() == 1
    assert max(n_img * height * width, n_img * geometry.out_height * geometry.out_width) < 2**31, \
        "pixel indices must fit in int32"
    p = idx.numel()
    assert grad_rows.shape == (p, c_out), f"grad_rows has shape {tuple(grad_rows.shape)}, expected {(p, c_out)}"
    grad_rows = grad_rows.float().contiguous()
    h_out, w_out = geometry.out_height, geometry.out_width
    geo_args = (p, height, width, h_out, w_out, c_in, c_out, geometry.pad_h, geometry.pad_w, geometry.dil_h, geometry.dil_w)

    grad_x = grad_w = None
    if need_input:
        grad_x = torch.zeros((n_img, height, width, c_in), dtype=torch.float32, device=x.device)
        if p > 0:
            def grid_x(meta):
                return (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c_in, meta["BLOCK_CI"]))

            _bwd_input_tuned[grid_x](
                grad_rows, weight, idx, grad_x, *geo_args,
                KH=kh, KW=kw, ATOMIC=not geometry.is_pointwise, ALLOW_TF32=bool(allow_tf32),
            )
    if need_weight:
        grad_w = torch.zeros((kh, kw, c_in, c_out), dtype=torch.float32, device=x.device)
        if p > 0:
            target = _target_programs(x.device)

            def grid_w(meta):
                tiles = kh * kw * triton.cdiv(c_in, meta["BLOCK_CI"]) * triton.cdiv(c_out, meta["BLOCK_CO"])
                split = max(1, min(triton.cdiv(target, tiles), triton.cdiv(p, meta["BLOCK_P"])))
                return (kh * kw * triton.cdiv(c_in, meta["BLOCK_CI"]), triton.cdiv(c_out, meta["BLOCK_CO"]), split)

            _bwd_weight_tuned[grid_w](
                x, grad_rows, idx, grad_w, *geo_args, KH=kh, KW=kw, ALLOW_TF32=bool(allow_tf32),
            )
    return grad_x, grad_w
