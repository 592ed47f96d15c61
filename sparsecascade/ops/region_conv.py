"""``region_conv2d``: a stride-1 convolution computed only at the active output pixels.

    region_conv2d(x, w, b, m)                     == where(m, conv2d(x, w, b), 0)
    region_conv2d(x, w, b, m, residual=r, ...)    == act(r + s * where(m, conv, 0))

(outside the mask: ``act(r)``, the residual passed through the block's activation, exactly as
the unfused ``act(r + s * region_conv2d(...))`` computes it).

``region_conv2d_residual(x, w, b, m)`` is the second form with ``r = x``.

This file holds the argument checks, the layout conversion (NCHW API, NHWC kernels), the
backend dispatch and the autograd formula; the MAC count is ``ops/macs.py``. The op is registered with
``torch.library`` so that ``torch.compile`` keeps it as one opaque node (no graph break),
forward and backward; eager inference calls its implementation directly (no dispatch cost).
The active set arrives as a ``RegionIndex`` (compacted once per stage, tap tables cached) or as a
bare mask, compacted here.

MACs: inside ``count_macs()``, every forward adds the multiply-accumulates of the rows it hands
to a kernel (the active rows), or of every output pixel when it runs the dense convolution.

Backends: "torch" or "triton" reach the op; "auto" resolves to one of them (the torch twins on a
CPU, Triton on a GPU) and also sets ``dense_fallback``: above the active fraction
``dense_fallback_fraction(device, dtype)`` the dense convolution runs instead of the gather path.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..kernels import ConvGeometry, fold_affine, region_conv2d_backward_torch, region_conv2d_forward_torch
from ._backend import TRITON_DTYPES, KernelBackend, resolve_backend, triton_region_conv
from .dense_fallback import dense_fallback_fraction
from .macs import record_macs
from .region_index import RegionIndex


def _pair(value, argument: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{argument}: expected an int or a pair of ints, got {value!r}")
    return pair


def _check_vector(t, argument: str, length: int, ref: torch.Tensor):
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.shape != (length,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{argument}: expected a tensor of shape ({length},), got {got}")
    if t.device != ref.device:
        raise ValueError(f"{argument}: expected device {ref.device} (the input's), got {t.device}")


def check_region_conv_args(input, weight, bias, mask, padding, dilation, stride, scale, shift, residual):
    """Validate everything before any kernel runs; return the conv geometry."""
    if not isinstance(input, torch.Tensor) or input.dim() != 4 or not input.is_floating_point():
        raise ValueError(f"input: expected a float tensor (N, C_in, H, W), got {getattr(input, 'shape', input)!r}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight: expected a tensor (C_out, C_in, KH, KW), got {getattr(weight, 'shape', weight)!r}")
    if weight.numel() == 0:
        raise ValueError(f"weight: expected a non-empty (C_out, C_in, KH, KW) tensor, got shape {tuple(weight.shape)}")
    if weight.shape[1] != input.shape[1]:
        raise ValueError(
            f"weight: expected C_in = {input.shape[1]} (the input's channels) in dim 1, got shape {tuple(weight.shape)}"
            " (grouped convolution is not supported)"
        )
    if weight.dtype != input.dtype:
        raise ValueError(f"weight: expected dtype {input.dtype} (the input's), got {weight.dtype}")
    if weight.device != input.device:
        raise ValueError(f"weight: expected device {input.device} (the input's), got {weight.device}")
    if _pair(stride, "stride") != (1, 1):
        raise ValueError(f"stride: region convolution supports stride 1 only, got {stride!r}")
    pad_h, pad_w = _pair(padding, "padding")
    dil_h, dil_w = _pair(dilation, "dilation")
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"padding: expected values >= 0, got {padding!r}")
    if dil_h < 1 or dil_w < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation!r}")
    n, _, height, width = input.shape
    geometry = ConvGeometry(height, width, weight.shape[2], weight.shape[3], pad_h, pad_w, dil_h, dil_w)
    if geometry.out_height < 1 or geometry.out_width < 1:
        raise ValueError(
            f"weight: a {weight.shape[2]}x{weight.shape[3]} kernel (dilation {dilation}, padding {padding}) "
            f"does not fit the {height}x{width} input"
        )
    expected_mask = (n, geometry.out_height, geometry.out_width)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask: expected a torch.bool tensor of shape {expected_mask}, got {got}")
    if tuple(mask.shape) != expected_mask:
        raise ValueError(f"mask: expected shape (N, H_out, W_out) = {expected_mask}, got {tuple(mask.shape)}")
    if mask.device != input.device:
        raise ValueError(f"mask: expected device {input.device} (the input's), got {mask.device}")
    c_out = weight.shape[0]
    _check_vector(bias, "bias", c_out, input)
    _check_vector(scale, "scale", c_out, input)
    _check_vector(shift, "shift", c_out, input)
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and t.requires_grad:
            raise ValueError(f"{name}: expected a constant (a folded frozen BatchNorm), got a tensor that requires grad")
    if residual is not None:
        expected = (n, c_out, geometry.out_height, geometry.out_width)
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != expected:
            raise ValueError(f"residual: expected shape {expected}, got {getattr(residual, 'shape', residual)!r}")
        if residual.device != input.device or residual.dtype != input.dtype:
            raise ValueError(f"residual: expected {input.dtype} on {input.device} (the input's), got {residual.dtype} on {residual.device}")
    return geometry


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> contiguous (N, H, W, C); free for a channels_last tensor."""
    return t.permute(0, 2, 3, 1).contiguous()


def _geometry_of(x: torch.Tensor, weight: torch.Tensor, padding, dilation) -> ConvGeometry:
    return ConvGeometry(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], *padding, *dilation)


def _use_dense(dense_fallback: bool, active: int, total: int, x: torch.Tensor) -> bool:
    return dense_fallback and active > dense_fallback_fraction(x.device, x.dtype) * total


def _kernel_backend(backend: str, x: torch.Tensor) -> tuple[str, bool]:
    """(the kernels that run: "torch" or "triton", dense_fallback): "auto" runs its device's kernels
    (the torch twin on a CPU, Triton on a GPU; the torch twin for float64, which Triton's kernels do
    not take) with the dense fallback at high density; "torch" and "triton" always run those kernels."""
    resolved = resolve_backend(backend, x.device)
    if resolved == "triton" and x.dtype not in TRITON_DTYPES:
        if backend != "auto":
            raise ValueError(f"backend: 'triton' runs float32, float16 and bfloat16 inputs, got {x.dtype}; "
                             "use backend='torch' or 'auto'")
        resolved = "torch"
    return resolved, backend == "auto"


def _dense_then_mask(x, weight, mask, residual, padding, dilation, *, bias, scale, shift, res_scale, relu, full):
    """The dense convolution (frozen-BN affine folded into its weights), the mask (unless ``full``: every
    pixel active), then the residual and the activation in place: for dense active sets."""
    weight, bias = fold_affine(weight, bias, scale, shift)
    y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, padding=tuple(padding),
                 dilation=tuple(dilation))
    if not full:
        y.masked_fill_(~mask[:, None], 0)
    if residual is not None:
        if res_scale != 1.0:
            y.mul_(res_scale)
        y.add_(residual)
    if relu:
        y.relu_()
    return y.contiguous(memory_format=torch.channels_last)


def _compacted(mask: torch.Tensor, idx: Optional[torch.Tensor]) -> torch.Tensor:
    """The active rows: as given (a ``RegionIndex``'s), or compacted here from a bare mask under
    ``torch.compile``, where a data-dependent size may not leave the op."""
    return mask.reshape(-1).nonzero().squeeze(1) if idx is None else idx


def _taps(tap_rows: Optional[torch.Tensor], tap_padding: Optional[torch.Tensor]):
    return None if tap_rows is None else (tap_rows, tap_padding)


def _region_conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: torch.Tensor,
    idx: Optional[torch.Tensor],
    tap_rows: Optional[torch.Tensor],
    tap_padding: Optional[torch.Tensor],
    input_rows: Optional[torch.Tensor],
    input_pos: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    padding: Sequence[int],
    dilation: Sequence[int],
    res_scale: float,
    relu: bool,
    backend: str,
    dense_fallback: bool,
) -> torch.Tensor:
    geometry = _geometry_of(x, weight, padding, dilation)
    idx = _compacted(mask, idx)
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    epilogue = dict(bias=contiguous(bias), scale=contiguous(scale), shift=contiguous(shift),
                    res_scale=res_scale, relu=relu)
    if _use_dense(dense_fallback, idx.numel(), mask.numel(), x):
        record_macs(mask.numel(), weight.shape)
        return _dense_then_mask(x, weight, mask, residual, padding, dilation, full=idx.numel() == mask.numel(),
                                **epilogue)
    x_nhwc = _nhwc(x)
    # (KH, KW, C_in, C_out): both kernels read the view through its strides (free for a channels_last weight)
    w_khwc = weight.permute(2, 3, 1, 0)
    # Allocated as a channels_last (N, C, H, W) tensor and written through its NHWC view: the op
    # returns the base tensor, never a view (autograd forbids in-place ops on custom-op views).
    out_shape = (x.shape[0], weight.shape[0], geometry.out_height, geometry.out_width)
    if residual is None:
        result = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).zero_()
    elif relu:  # outside the mask: relu(residual); the kernel overwrites the active rows
        result = torch.relu(residual).contiguous(memory_format=torch.channels_last)
    else:
        result = residual.clone(memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)
    res_nhwc = None if residual is None else _nhwc(residual)
    if idx.numel():
        if backend == "triton":
            triton_region_conv()[0](x_nhwc, w_khwc, idx, out, geometry, residual=res_nhwc, **epilogue)
        else:
            region_conv2d_forward_torch(x_nhwc, w_khwc, idx, out, geometry, residual=res_nhwc,
                                        taps=_taps(tap_rows, tap_padding), **epilogue)
        record_macs(idx.numel(), weight.shape)
    return result


# The same function, registered: what autograd records and torch.compile keeps as one opaque node.
_region_conv2d_op = torch.library.custom_op("sparsecascade::region_conv2d", mutates_args=())(_region_conv2d_forward)


@_region_conv2d_op.register_fake
def _(x, weight, bias, mask, idx, tap_rows, tap_padding, input_rows, input_pos, scale, shift, residual, padding,
      dilation, res_scale, relu, backend, dense_fallback):
    geometry = _geometry_of(x, weight, padding, dilation)
    shape = (x.shape[0], weight.shape[0], geometry.out_height, geometry.out_width)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _region_conv2d_backward(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    idx: Optional[torch.Tensor],
    tap_rows: Optional[torch.Tensor],
    tap_padding: Optional[torch.Tensor],
    input_rows: Optional[torch.Tensor],
    input_pos: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    padding: Sequence[int],
    dilation: Sequence[int],
    res_scale: float,
    relu: bool,
    has_bias: bool,
    has_residual: bool,
    needs_input_grad: bool,
    needs_weight_grad: bool,
    backend: str,
    dense_fallback: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_residual); an unneeded one is an empty tensor."""
    c_out = weight.shape[0]
    geometry = _geometry_of(x, weight, padding, dilation)
    idx = _compacted(mask, idx)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    g_nhwc = _nhwc(grad_out)
    g_rows = g_nhwc.view(-1, c_out).index_select(0, idx).to(acc)
    if relu:
        g_rows = g_rows * (out.permute(0, 2, 3, 1).reshape(-1, c_out).index_select(0, idx) > 0)
    # Each unneeded result is its own empty tensor: custom ops may not return aliases.
    empty = lambda: x.new_empty(0)  # noqa: E731
    grad_residual = empty()
    if has_residual:  # d act(r + s * where(m, y, 0)) / dr: relu'(out) everywhere, or the identity
        if relu:
            grad_residual = (g_nhwc * (out.permute(0, 2, 3, 1) > 0)).permute(0, 3, 1, 2)
        else:
            grad_residual = g_nhwc.clone().permute(0, 3, 1, 2)
    g_conv = g_rows * res_scale
    if scale is not None:
        g_conv = g_conv * scale.to(acc)
    grad_bias = g_conv.sum(0).to(weight.dtype) if has_bias else empty()
    grad_x = grad_w = None
    if needs_input_grad or needs_weight_grad:
        if _use_dense(dense_fallback, idx.numel(), mask.numel(), x):
            g_dense = torch.zeros_like(g_nhwc, dtype=acc).view(-1, c_out).index_copy_(0, idx, g_conv)
            g_dense = g_dense.view(g_nhwc.shape).permute(0, 3, 1, 2).to(x.dtype)
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                g_dense, x, weight, None, [1, 1], list(padding), list(dilation), False, [0, 0], 1,
                [needs_input_grad, needs_weight_grad, False],
            )
        else:
            w_khwc = weight.permute(2, 3, 1, 0)
            needs = dict(need_input=needs_input_grad, need_weight=needs_weight_grad)
            if backend == "triton":
                input_index = None if input_rows is None else (input_rows, input_pos)
                gx, gw = triton_region_conv()[1](g_conv.contiguous(), _nhwc(x), w_khwc, idx, geometry,
                                                 input_index=input_index, **needs)
            else:
                gx, gw = region_conv2d_backward_torch(g_conv.contiguous(), _nhwc(x), w_khwc, idx, geometry,
                                                      taps=_taps(tap_rows, tap_padding), **needs)
            grad_x = None if gx is None else gx.to(x.dtype).permute(0, 3, 1, 2)
            grad_w = None if gw is None else gw.to(weight.dtype).permute(3, 2, 0, 1).contiguous()
    grad_x = empty() if grad_x is None else grad_x
    grad_w = empty() if grad_w is None else grad_w
    return grad_x, grad_w, grad_bias, grad_residual


_region_conv2d_backward_op = torch.library.custom_op("sparsecascade::region_conv2d_backward",
                                                     mutates_args=())(_region_conv2d_backward)


@_region_conv2d_backward_op.register_fake
def _(grad_out, out, x, weight, mask, idx, tap_rows, tap_padding, input_rows, input_pos, scale, padding, dilation,
      res_scale, relu, has_bias, has_residual, needs_input_grad, needs_weight_grad, backend, dense_fallback):
    return (
        torch.empty_like(x) if needs_input_grad else x.new_empty(0),
        torch.empty_like(weight) if needs_weight_grad else x.new_empty(0),
        weight.new_empty(weight.shape[0]) if has_bias else x.new_empty(0),
        torch.empty_like(grad_out) if has_residual else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    (x, weight, bias, mask, idx, tap_rows, tap_padding, input_rows, input_pos, scale, shift, residual, padding,
     dilation, res_scale, relu, backend, dense_fallback) = inputs
    ctx.save_for_backward(x, weight, mask, idx, tap_rows, tap_padding, input_rows, input_pos, scale,
                          output if relu else None)
    ctx.options = (padding, dilation, res_scale, relu, bias is not None, residual is not None, backend, dense_fallback)


def _backward(ctx, grad_out):
    x, weight, mask, idx, tap_rows, tap_padding, input_rows, input_pos, scale, out = ctx.saved_tensors
    padding, dilation, res_scale, relu, has_bias, has_residual, backend, dense_fallback = ctx.options
    needs = ctx.needs_input_grad
    # Eager, first-order: the function itself. The op (what torch.compile traces, and what a double
    # backward meets: no derivative of its own) costs its dispatch, more than a small layer's kernels.
    eager = not torch.compiler.is_compiling() and not torch.is_grad_enabled()
    grad_x, grad_w, grad_b, grad_r = (_region_conv2d_backward if eager else _region_conv2d_backward_op)(
        grad_out, out if out is not None else grad_out, x, weight, mask, idx, tap_rows, tap_padding, input_rows,
        input_pos, scale, padding, dilation, res_scale, relu, has_bias, has_residual, needs[0], needs[1], backend,
        dense_fallback,
    )
    return (
        grad_x if needs[0] else None,
        grad_w if needs[1] else None,
        grad_b if has_bias and needs[2] else None,
        None, None, None, None, None, None, None, None,  # mask, idx, the index tables, scale, shift
        grad_r if has_residual and needs[11] else None,
        None, None, None, None, None, None,
    )


_region_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


class _RegionConv2dFunction(torch.autograd.Function):
    """The op's forward and backward for eager training, without the custom op's dispatch (its
    argument binding and alias checks cost about as much as a small layer's kernels, per call and
    per layer). torch.compile traces the registered op instead (``run_region_conv``)."""

    @staticmethod
    def forward(ctx, *args):
        out = _region_conv2d_forward(*args)
        _setup_context(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out)


def region_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Union[torch.Tensor, RegionIndex],
    padding=0,
    dilation=1,
    backend: KernelBackend = "auto",
    *,
    stride=1,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    res_scale: float = 1.0,
    relu: bool = False,
) -> torch.Tensor:
    """Convolution computed only where ``mask`` is True; zeros (or ``act(residual)``) elsewhere.

    Equals ``act(residual + res_scale * torch.where(mask[:, None], (conv2d(input, weight, bias) * scale
    + shift), 0))`` with absent terms dropped (``act`` is ReLU if ``relu``, else the identity; no
    residual: zeros outside the mask, and ``conv2d(...) * mask[:, None]`` for finite inputs).
    Stride 1 only; ``padding`` and ``dilation`` as in ``F.conv2d`` (int or pair). ``mask`` is a bool
    ``(N, H_out, W_out)`` tensor, or a ``RegionIndex`` of one, which carries the compacted indices and
    the tap tables from layer to layer (a bare mask is compacted here, one ``nonzero`` per call).

    ``scale``/``shift`` (per output channel) fold a frozen BatchNorm and receive no gradient.
    ``backend``: "auto" (Triton on CUDA, the torch path on a CPU; either runs the dense conv above
    the active fraction ``dense_fallback_fraction(device, dtype)`` measured on this processor or
    GPU), "torch" (always gather-GEMM-scatter) or "triton" (always the Triton kernels). The result
    is channels_last; below the crossover its cost, forward and backward, is proportional to the
    number of active pixels.
    """
    index = mask if isinstance(mask, RegionIndex) else None
    geometry = check_region_conv_args(input, weight, bias, mask if index is None else index.mask, padding, dilation,
                                      stride, scale, shift, residual)
    if index is None and not torch.compiler.is_compiling():
        index = RegionIndex(mask)
    return run_region_conv(input, weight, bias, mask if index is None else index, geometry, backend, scale=scale,
                           shift=shift, residual=residual, res_scale=res_scale, relu=relu)


def region_conv2d_residual(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Union[torch.Tensor, RegionIndex],
    padding=0,
    dilation=1,
    backend: KernelBackend = "auto",
    **epilogue,
) -> torch.Tensor:
    """``input + where(mask, conv2d(input, weight, bias), 0)``: the residual form of DESIGN.md section 2
    (``input`` copied outside the mask), for a convolution that keeps the channels and the size;
    ``region_conv2d`` with ``residual=input`` (``epilogue``: its ``scale``, ``shift``, ``res_scale``, ``relu``)."""
    if isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor) and weight.dim() == 4 \
            and input.dim() == 4 and weight.shape[0] != input.shape[1]:
        raise ValueError(f"weight: expected C_out = C_in = {input.shape[1]} (the input's channels, added back), "
                         f"got shape {tuple(weight.shape)}")
    return region_conv2d(input, weight, bias, mask, padding, dilation, backend, residual=input, **epilogue)


def run_region_conv(input, weight, bias, region: Union[torch.Tensor, RegionIndex], geometry: ConvGeometry,
                    backend: KernelBackend = "auto", *, scale=None, shift=None, residual=None, res_scale: float = 1.0,
                    relu: bool = False) -> torch.Tensor:
    """``region_conv2d`` without its argument checks, for callers whose arguments are valid by
    construction (``RegionConv2d``: its own weights, the stage's index at the layer's output size):
    a small layer's checks cost more than its arithmetic. ``region`` is a ``RegionIndex``, or a bare
    mask under ``torch.compile``."""
    index = region if isinstance(region, RegionIndex) else None
    kernel_backend, dense_fallback = _kernel_backend(backend, input)
    compiling = torch.compiler.is_compiling()
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias, residual))
    tap_rows = tap_padding = input_rows = input_pos = idx = None
    if index is not None:
        idx = index.rows
        gathers = (not geometry.is_pointwise and index.count > 0
                   and not _use_dense(dense_fallback, index.count, index.numel, input))
        if gathers and kernel_backend != "triton":
            tap_rows, tap_padding = index.taps(geometry)
        elif gathers and training and input.requires_grad and not compiling:
            # the Triton backward's input-side index, shared by every layer of this geometry on this
            # set (built per call it cost as much GPU time as the backward's kernels: validate.py kernels)
            input_rows, input_pos = index.input_index(geometry)
    args = (input, weight, bias, region if index is None else index.mask, idx, tap_rows, tap_padding, input_rows,
            input_pos, scale, shift, residual, [geometry.pad_h, geometry.pad_w], [geometry.dil_h, geometry.dil_w],
            float(res_scale), bool(relu), kernel_backend, dense_fallback)
    if index is None or compiling:
        return _region_conv2d_op(*args)  # what torch.compile traces
    # Eager mode skips the op's dispatch (tens of microseconds, more than a small layer's arithmetic):
    # inference calls the forward itself, training goes through an autograd.Function over it.
    if training:
        return _RegionConv2dFunction.apply(*args)
    return _region_conv2d_forward(*args)
