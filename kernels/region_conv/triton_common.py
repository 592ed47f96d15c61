"""Triton helpers shared by the region-convolution kernels: where an output pixel's taps read.

Pixel arithmetic is int32 (the launchers check N*H*W < 2^31, so divisions stay cheap); the row
offsets they return are int64, since N*H*W*C may exceed 2^31.
"""
import triton
import triton.language as tl


@triton.jit
def load_output_pixels(idx_ptr, offs_p, mask_p, H_out, W_out):
    """(pix, n, oy, ox) of the active output pixels: ``pix = idx[offs_p]``, linear in N*H_out*W_out."""
    pix = tl.load(idx_ptr + offs_p, mask=mask_p, other=0).to(tl.int32)
    hw_out = H_out * W_out
    n = pix // hw_out
    rem = pix - n * hw_out
    oy = rem // W_out
    ox = rem - oy * W_out
    return pix, n, oy, ox


@triton.jit
def tap_input_rows(n, oy, ox, mask_p, tap, H, W, pad_h, pad_w, dil_h, dil_w, KW: tl.constexpr):
    """The NHWC input row (int64) tap ``tap`` of each output pixel reads, and whether it lies inside
    the image (False in the zero padding and for masked-off lanes)."""
    ky = tap // KW
    kx = tap - ky * KW
    iy = oy - pad_h + ky * dil_h
    ix = ox - pad_w + kx * dil_w
    valid = mask_p & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    row = ((n * H + iy) * W + ix).to(tl.int64)
    return row, valid
