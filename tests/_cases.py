"""Shared hypothesis strategies and dense references for the kernel and op tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

KERNEL_SIZES = [(1, 1), (3, 3), (5, 5), (1, 7), (7, 1), (1, 3), (3, 1), (2, 2)]
MASK_KINDS = ["empty", "full", "random", "clustered", "single"]


@dataclass
class ConvCase:
    """One drawn region-conv problem: tensors plus the arguments of ``region_conv2d``."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    padding: tuple[int, int]
    dilation: tuple[int, int]
    scale: torch.Tensor | None
    shift: torch.Tensor | None
    residual: torch.Tensor | None
    res_scale: float
    relu: bool

    def kwargs(self):
        return dict(scale=self.scale, shift=self.shift, residual=self.residual, res_scale=self.res_scale, relu=self.relu)


def make_mask(kind: str, n: int, h: int, w: int, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Boolean (N, H, W) masks: empty, full, i.i.d. random, spatially clustered blobs, or one pixel."""
    if kind == "empty":
        return torch.zeros(n, h, w, dtype=torch.bool)
    if kind == "full":
        return torch.ones(n, h, w, dtype=torch.bool)
    if kind == "random":
        return torch.rand(n, h, w, generator=gen) < p
    if kind == "single":
        mask = torch.zeros(n, h, w, dtype=torch.bool)
        flat = int(torch.randint(n * h * w, (1,), generator=gen))
        mask.view(-1)[flat] = True
        return mask
    # clustered: a smooth random field thresholded, so active pixels form blobs (as hard pixels do)
    field = torch.rand(n, 1, max(1, h // 3 + 1), max(1, w // 3 + 1), generator=gen)
    field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return field < p


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in a contiguous, channels_last or non-contiguous (strided) layout."""
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other element of a twice-as-wide buffer: no standard layout
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


@st.composite
def conv_cases(draw, max_channels=20, max_size=12, max_batch=3, dtypes=(torch.float32, torch.float64),
               epilogue=True, kernel_sizes=KERNEL_SIZES):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, max_batch))
    c_in = draw(st.integers(1, max_channels))
    c_out = draw(st.integers(1, max_channels))
    kh, kw = draw(st.sampled_from(kernel_sizes))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, (kh - 1) * dil[0])), draw(st.integers(0, (kw - 1) * dil[1])))
    # the input must be at least as large as the (dilated) kernel minus the padding
    h = max(draw(st.integers(1, max_size)), dil[0] * (kh - 1) + 1 - 2 * pad[0])
    w = max(draw(st.integers(1, max_size)), dil[1] * (kw - 1) + 1 - 2 * pad[1])
    h_out, w_out = h + 2 * pad[0] - dil[0] * (kh - 1), w + 2 * pad[1] - dil[1] * (kw - 1)
    mask = make_mask(draw(st.sampled_from(MASK_KINDS)), n, h_out, w_out, gen, p=draw(st.floats(0.05, 0.95)))
    x = layout(torch.randn(n, c_in, h, w, generator=gen).to(dtype), draw(st.sampled_from(["contiguous", "channels_last", "strided"])))
    weight = (torch.randn(c_out, c_in, kh, kw, generator=gen) / (c_in * kh * kw) ** 0.5).to(dtype)
    use = (lambda: draw(st.booleans())) if epilogue else (lambda: False)
    bias = torch.randn(c_out, generator=gen).to(dtype) if draw(st.booleans()) else None
    scale = (torch.rand(c_out, generator=gen) + 0.5).to(dtype) if use() else None
    shift = torch.randn(c_out, generator=gen).to(dtype) if use() else None
    residual = torch.randn(n, c_out, h_out, w_out, generator=gen).to(dtype) if use() else None
    res_scale = draw(st.sampled_from([1.0, 0.17, -0.5])) if residual is not None else 1.0
    relu = use()
    return ConvCase(x, weight, bias, mask, pad, dil, scale, shift, residual, res_scale, relu)


def dense_reference(case: ConvCase, x=None, weight=None, bias=None, residual=None, dtype=torch.float64):
    """DESIGN.md section 2 computed densely, layer by layer: the conv (and its frozen-BN affine) masked,
    then the residual and the activation: act(r + s * where(mask, (conv + b) * scale + shift, 0))."""
    x = case.x if x is None else x
    weight = case.weight if weight is None else weight
    bias = case.bias if bias is None else bias
    residual = case.residual if residual is None else residual
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    y = F.conv2d(cast(x), cast(weight), cast(bias), padding=case.padding, dilation=case.dilation)
    if case.scale is not None:
        y = y * cast(case.scale)[:, None, None]
    if case.shift is not None:
        y = y + cast(case.shift)[:, None, None]
    y = torch.where(case.mask[:, None], y, torch.zeros((), dtype=dtype))
    if residual is not None:
        y = cast(residual) + case.res_scale * y
    if case.relu:
        y = torch.relu(y)
    return y


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) against the float64 reference."""
    return {
        torch.float64: (1e-10, 1e-10),
        torch.float32: (1e-5, 1e-5),
        torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (2e-2, 2e-2),
    }[dtype]
