"""The kernels registered as ``torch.library`` ops (``triton_ops()``, registered on first call).

``torch.library.triton_op`` with ``torch.library.wrap_triton`` around every launch, so that
``torch.compile`` traces into the Triton kernels on a GPU (inductor then sees the launches and the
torch ops around them), the torch twins as their CPU kernels (``register_kernel("cpu")``), fake
implementations for tracing, and an autograd formula for the forward. (``region_conv2d`` and
``confidence_threshold`` call the launchers directly: ``ops/region_conv.py``, ``ops/confidence.py``.)

    torch.ops.sparsecascade.region_conv2d_rows(x, weight, idx, bias, scale, shift, residual,
        tap_rows, tap_padding, padding, dilation, res_scale, relu) -> out
        x (N, H, W, C_in) NHWC, weight (KH, KW, C_in, C_out) (any strided view), idx (P,) int64:
        a new contiguous (N, H_out, W_out, C_out) map, ``out[idx]`` as the forward kernel writes it
        and ``act(residual)`` (``relu`` or the identity) elsewhere, zeros without a residual.
        ``tap_rows``/``tap_padding``: ``ConvGeometry.tap_table(idx)`` if the caller cached it (read by
        the CPU kernel; the Triton kernel computes the taps itself). Differentiable in x, weight, bias
        and residual (scale and shift are constants: a folded frozen BatchNorm).
    torch.ops.sparsecascade.region_conv2d_rows_backward(grad_rows, x, weight, idx, tap_rows,
        tap_padding, input_rows, input_pos, padding, dilation, need_input, need_weight)
        -> (grad_x, grad_weight): the kernels' backward contract; an unneeded result is an empty
        tensor. ``input_rows``/``input_pos``: ``build_input_index``'s result (Triton), if cached.
    torch.ops.sparsecascade.confidence_threshold_rows(logits, rho, active)
        -> (labels, confidence, stop, next_active, next_idx): the confidence kernels' contract.

Under ``torch.compile`` the region-conv ops decompose into their Triton launches when the tensors
are on a GPU, Triton compiles (no interpreter) and every size but the row count P is a concrete int
(P may be data-dependent: an active set compacted inside the graph); otherwise, and always for the
confidence op (the size of ``next_idx`` is read on the host between its two kernels), each stays
one opaque node of the graph that runs its device's kernel. On a CPU the ops run the torch twins;
inside ``triton_on_cpu()`` (tests, under ``TRITON_INTERPRET=1``) they run the Triton kernels in
Triton's interpreter instead.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, NamedTuple, Optional, Sequence

import torch

from ..kernels import (
    TRITON_AVAILABLE,
    ConvGeometry,
    confidence_threshold_forward_torch,
    region_conv2d_backward_torch,
    region_conv2d_forward_torch,
    triton_interpreting,
)
from ._backend import triton_confidence, triton_region_conv

_CPU_RUNS_TRITON: contextvars.ContextVar[bool] = contextvars.ContextVar("sparsecascade_cpu_runs_triton", default=False)


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Inside the block, the registered ops' CPU kernels run the Triton kernels in Triton's
    interpreter instead of the torch twins (needs ``TRITON_INTERPRET=1``: tests). A forward run
    here runs its backward the same way, wherever the backward is called."""
    if enabled and not (TRITON_AVAILABLE and triton_interpreting()):
        raise RuntimeError("triton_on_cpu() needs Triton's interpreter: set TRITON_INTERPRET=1 before importing sparsecascade")
    token = _CPU_RUNS_TRITON.set(bool(enabled))
    try:
        yield
    finally:
        _CPU_RUNS_TRITON.reset(token)


class TritonOps(NamedTuple):
    """The registered ops (``torch.library.CustomOpDef``s; also ``torch.ops.sparsecascade.<name>``)."""

    region_conv2d_rows: object
    region_conv2d_rows_backward: object
    confidence_threshold_rows: object


_OPS: Optional[TritonOps] = None


def triton_ops_supported() -> bool:
    """Whether this torch has ``torch.library.triton_op`` and ``wrap_triton`` (torch >= 2.6)."""
    return hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")


def triton_ops() -> TritonOps:
    """The kernels as ``torch.library`` ops, registered on the first call (``triton_op`` imports
    part of inductor, about 2 s on a CPU: not paid by every import of sparsecascade). An op cannot
    be registered inside a ``torch.compile`` trace: where Triton runs on a GPU this module registers
    them at import (below); elsewhere call this once before compiling code that uses them."""
    global _OPS
    if _OPS is None:
        if not triton_ops_supported():
            raise RuntimeError(f"the Triton ops need torch.library.triton_op (torch >= 2.6), this is torch {torch.__version__}")
        _OPS = _register()
    return _OPS


def _geometry(x: torch.Tensor, weight: torch.Tensor, padding: Sequence[int], dilation: Sequence[int]) -> ConvGeometry:
    return ConvGeometry(x.shape[1], x.shape[2], weight.shape[0], weight.shape[1], padding[0], padding[1],
                        dilation[0], dilation[1])


def _out_shape(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> tuple:
    return (x.shape[0], geometry.out_height, geometry.out_width, weight.shape[-1])


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _initial_output(x, weight, geometry, residual, relu) -> torch.Tensor:
    """The output map before the active rows are written: zeros, or act(residual)."""
    if residual is None:
        return x.new_zeros(_out_shape(x, weight, geometry))
    if tuple(residual.shape) != _out_shape(x, weight, geometry) or residual.dtype != x.dtype:
        raise ValueError(f"residual: expected {x.dtype} {_out_shape(x, weight, geometry)} (NHWC), "
                         f"got {residual.dtype} {tuple(residual.shape)}")
    return torch.relu(residual) if relu else residual.clone()


def _forward_triton(x, weight, idx, bias, scale, shift, residual, padding, dilation, res_scale, relu, wrap_kernel):
    forward, _ = triton_region_conv()
    x, residual = x.contiguous(), _contiguous(residual)
    geometry = _geometry(x, weight, padding, dilation)
    out = _initial_output(x, weight, geometry, residual, relu)
    forward(x, weight, idx, out, geometry, bias=_contiguous(bias), scale=_contiguous(scale), shift=_contiguous(shift),
            residual=residual, res_scale=res_scale, relu=relu, wrap_kernel=wrap_kernel)
    return out


def _forward_torch(x, weight, idx, bias, scale, shift, residual, tap_rows, tap_padding, padding, dilation, res_scale,
                   relu):
    x, residual = x.contiguous(), _contiguous(residual)
    geometry = _geometry(x, weight, padding, dilation)
    out = _initial_output(x, weight, geometry, residual, relu)
    if idx.numel():
        region_conv2d_forward_torch(x, weight, idx, out, geometry, bias=bias, scale=scale, shift=shift,
                                    residual=residual, res_scale=res_scale, relu=relu,
                                    taps=None if tap_rows is None else (tap_rows, tap_padding))
    return out


def _grads_or_empty(grad_x, grad_w, x):
    acc = _acc_dtype(x)
    empty = lambda: x.new_empty(0, dtype=acc)  # noqa: E731  (each its own tensor: op outputs may not alias)
    return (empty() if grad_x is None else grad_x), (empty() if grad_w is None else grad_w)


def _backward_triton(grad_rows, x, weight, idx, input_rows, input_pos, padding, dilation, need_input, need_weight,
                     wrap_kernel):
    _, backward = triton_region_conv()
    x = x.contiguous()
    geometry = _geometry(x, weight, padding, dilation)
    input_index = None if input_rows is None else (input_rows, input_pos)
    grad_x, grad_w = backward(grad_rows, x, weight, idx, geometry, need_input=need_input, need_weight=need_weight,
                              input_index=input_index, wrap_kernel=wrap_kernel)
    return _grads_or_empty(grad_x, grad_w, x)


def _backward_torch(grad_rows, x, weight, idx, tap_rows, tap_padding, padding, dilation, need_input, need_weight):
    x = x.contiguous()
    geometry = _geometry(x, weight, padding, dilation)
    grad_x, grad_w = region_conv2d_backward_torch(
        grad_rows, x, weight, idx, geometry, need_input=need_input, need_weight=need_weight,
        taps=None if tap_rows is None else (tap_rows, tap_padding),
    )
    return _grads_or_empty(grad_x, grad_w, x)


def _traceable_into_triton(row_args: tuple[int, ...], ignored_args: tuple[int, ...]):
    """Predicate on an op's arguments: may torch.compile trace into its Triton launches? Needs GPU
    tensors and compiled Triton (the interpreter's kernels are no @triton.jit functions that
    ``wrap_triton`` can record), and every size a concrete int except the row count (dim 0) of the
    tensors at ``row_args`` (idx, grad_rows): P is data-dependent whenever the active set is
    compacted inside the graph, and the launchers decide nothing on it that would guard (see
    ``kernels.region_conv.triton_common.known``). A symbolic batch or image size keeps the op opaque.
    The tensors at ``ignored_args`` (the twin's tap tables) are not read by the Triton path."""

    def traceable(args) -> bool:
        if not TRITON_AVAILABLE or triton_interpreting():
            return False
        for i, arg in enumerate(args):
            if i in ignored_args or arg is None:
                continue
            if isinstance(arg, torch.Tensor):
                sizes = arg.shape[1:] if i in row_args else arg.shape
                if arg.device.type != "cuda" or not all(isinstance(s, int) for s in sizes):
                    return False
            elif any(isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool))
                     for v in torch.utils._pytree.tree_leaves(arg)):
                return False
        return True

    return traceable


def _export_keeps_custom_ops() -> bool:
    try:
        from torch.export._trace import custom_triton_ops_decomposition_disabled
    except ImportError:  # pragma: no cover - older torch
        return False
    return custom_triton_ops_decomposition_disabled()


def _decompose_when_traceable(fn, traceable):
    """The op's rule under FunctionalTensorMode (AOTAutograd, i.e. torch.compile): trace into ``fn``
    (its ``wrap_triton`` launches become nodes inductor compiles) when ``traceable(args)``; else keep
    the op as one node (its fake implementation traces it; it runs its device's kernel). This replaces
    the rule ``triton_op`` installs, which always traces into ``fn``, also for CPU tensors, where
    ``fn``'s interpreted kernels cannot run on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    def rule(mode, op, types, args, kwargs):
        if not traceable(args) or _export_keeps_custom_ops():
            return mode.__torch_dispatch__(op, types, args, kwargs)
        if any(t not in (torch.Tensor, FunctionalTensor) and not issubclass(t, FakeTensor) for t in types):
            return NotImplemented
        with mode:
            return fn(*args, **kwargs)

    return rule


def _register() -> TritonOps:
    from torch._subclasses.functional_tensor import FunctionalTensorMode
    from torch.library import triton_op, wrap_triton

    # ---- region convolution, forward -------------------------------------------------------------

    def region_conv2d_rows_fn(
        x: torch.Tensor,
        weight: torch.Tensor,
        idx: torch.Tensor,
        bias: Optional[torch.Tensor],
        scale: Optional[torch.Tensor],
        shift: Optional[torch.Tensor],
        residual: Optional[torch.Tensor],
        tap_rows: Optional[torch.Tensor],
        tap_padding: Optional[torch.Tensor],
        padding: Sequence[int],
        dilation: Sequence[int],
        res_scale: float,
        relu: bool,
    ) -> torch.Tensor:
        return _forward_triton(x, weight, idx, bias, scale, shift, residual, padding, dilation, res_scale, relu,
                               wrap_triton)

    region_conv2d_rows = triton_op("sparsecascade::region_conv2d_rows", mutates_args=())(region_conv2d_rows_fn)

    @region_conv2d_rows.register_kernel("cpu")
    def _(x, weight, idx, bias, scale, shift, residual, tap_rows, tap_padding, padding, dilation, res_scale, relu):
        if _CPU_RUNS_TRITON.get():
            return _forward_triton(x, weight, idx, bias, scale, shift, residual, padding, dilation, res_scale, relu,
                                   None)
        return _forward_torch(x, weight, idx, bias, scale, shift, residual, tap_rows, tap_padding, padding, dilation,
                              res_scale, relu)

    @region_conv2d_rows.register_fake
    def _(x, weight, idx, bias, scale, shift, residual, tap_rows, tap_padding, padding, dilation, res_scale, relu):
        return x.new_empty(_out_shape(x, weight, _geometry(x, weight, padding, dilation)))

    # ---- region convolution, backward ------------------------------------------------------------

    def region_conv2d_rows_backward_fn(
        grad_rows: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        idx: torch.Tensor,
        tap_rows: Optional[torch.Tensor],
        tap_padding: Optional[torch.Tensor],
        input_rows: Optional[torch.Tensor],
        input_pos: Optional[torch.Tensor],
        padding: Sequence[int],
        dilation: Sequence[int],
        need_input: bool,
        need_weight: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _backward_triton(grad_rows, x, weight, idx, input_rows, input_pos, padding, dilation, need_input,
                                need_weight, wrap_triton)

    region_conv2d_rows_backward = triton_op("sparsecascade::region_conv2d_rows_backward",
                                            mutates_args=())(region_conv2d_rows_backward_fn)

    @region_conv2d_rows_backward.register_kernel("cpu")
    def _(grad_rows, x, weight, idx, tap_rows, tap_padding, input_rows, input_pos, padding, dilation, need_input,
          need_weight):
        if _CPU_RUNS_TRITON.get():
            return _backward_triton(grad_rows, x, weight, idx, input_rows, input_pos, padding, dilation, need_input,
                                    need_weight, None)
        return _backward_torch(grad_rows, x, weight, idx, tap_rows, tap_padding, padding, dilation, need_input,
                               need_weight)

    @region_conv2d_rows_backward.register_fake
    def _(grad_rows, x, weight, idx, tap_rows, tap_padding, input_rows, input_pos, padding, dilation, need_input,
          need_weight):
        acc = _acc_dtype(x)
        return (
            x.new_empty(tuple(x.shape), dtype=acc) if need_input else x.new_empty(0, dtype=acc),
            x.new_empty(tuple(weight.shape), dtype=acc) if need_weight else x.new_empty(0, dtype=acc),
        )

    # ---- autograd of the forward (the epilogue here, the convolution by the backward op) ---------

    def setup_context(ctx, inputs, output):
        (x, weight, idx, bias, scale, shift, residual, tap_rows, tap_padding, padding, dilation, res_scale,
         relu) = inputs
        for name, t in (("scale", scale), ("shift", shift)):
            if t is not None and t.requires_grad:
                raise ValueError(f"{name}: expected a constant (a folded frozen BatchNorm), got a tensor that requires grad")
        ctx.save_for_backward(x, weight, idx, scale, tap_rows, tap_padding, output if relu else None)
        ctx.options = (list(padding), list(dilation), float(res_scale), bool(relu),
                       None if bias is None else bias.dtype, residual is not None)
        ctx.cpu_runs_triton = _CPU_RUNS_TRITON.get()

    def backward(ctx, grad_out):
        x, weight, idx, scale, tap_rows, tap_padding, out = ctx.saved_tensors
        padding, dilation, res_scale, relu, bias_dtype, has_residual = ctx.options
        needs = ctx.needs_input_grad
        c_out = weight.shape[-1]
        acc = _acc_dtype(x)
        g = grad_out.contiguous()
        g_rows = g.view(-1, c_out).index_select(0, idx).to(acc)
        if relu:  # relu'(out) at the active rows; NaN outputs pass no gradient, as torch.relu's
            g_rows = g_rows * (out.reshape(-1, c_out).index_select(0, idx) > 0)
        grad_residual = None
        if has_residual and needs[6]:  # out = act(residual + ...) everywhere
            grad_residual = g * (out > 0) if relu else g.clone()
        g_conv = g_rows * res_scale
        if scale is not None:
            g_conv = g_conv * scale.to(acc)
        grad_bias = g_conv.sum(0).to(bias_dtype) if bias_dtype is not None and needs[3] else None
        grad_x = grad_w = None
        if needs[0] or needs[1]:
            with triton_on_cpu(ctx.cpu_runs_triton):
                gx, gw = region_conv2d_rows_backward(g_conv.contiguous(), x, weight, idx, tap_rows, tap_padding, None,
                                                     None, padding, dilation, needs[0], needs[1])
            grad_x = gx.to(x.dtype) if needs[0] else None
            grad_w = gw.to(weight.dtype) if needs[1] else None
        return (grad_x, grad_w, None, grad_bias, None, None, grad_residual, None, None, None, None, None, None)

    region_conv2d_rows.register_autograd(backward, setup_context=setup_context)

    # ---- confidence threshold ------------------------------------------------------------------

    def confidence_threshold_rows_fn(
        logits: torch.Tensor, rho: float, active: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return triton_confidence()(logits, rho, active, wrap_kernel=wrap_triton)

    confidence_threshold_rows = triton_op("sparsecascade::confidence_threshold_rows",
                                          mutates_args=())(confidence_threshold_rows_fn)

    @confidence_threshold_rows.register_kernel("cpu")
    def _(logits, rho, active):
        if _CPU_RUNS_TRITON.get():
            return triton_confidence()(logits, rho, active)
        return confidence_threshold_forward_torch(logits, rho, active)

    @confidence_threshold_rows.register_fake
    def _(logits, rho, active):
        m = logits.shape[0]
        n_next = torch.library.get_ctx().new_dynamic_size()
        return (
            logits.new_empty(m, dtype=torch.int64),
            logits.new_empty(m, dtype=torch.float32),
            logits.new_empty(m, dtype=torch.bool),
            logits.new_empty(m, dtype=torch.bool),
            logits.new_empty(n_next, dtype=torch.int64),
        )

    # torch.compile: trace into the region-conv launches where they can be traced; the confidence op
    # stays one node (its launcher reads the next active set's size on the host between its kernels).
    region_conv2d_rows.register_torch_dispatch(
        FunctionalTensorMode,
        _decompose_when_traceable(region_conv2d_rows_fn, _traceable_into_triton(row_args=(2,), ignored_args=(7, 8))))
    region_conv2d_rows_backward.register_torch_dispatch(
        FunctionalTensorMode,
        _decompose_when_traceable(region_conv2d_rows_backward_fn,
                                  _traceable_into_triton(row_args=(0, 3), ignored_args=(4, 5))))
    confidence_threshold_rows.register_torch_dispatch(
        FunctionalTensorMode, _decompose_when_traceable(confidence_threshold_rows_fn, lambda args: False))

    return TritonOps(region_conv2d_rows, region_conv2d_rows_backward, confidence_threshold_rows)


if TRITON_AVAILABLE and triton_ops_supported() and torch.cuda.is_available():
    triton_ops()
