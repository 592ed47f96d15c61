"""``confidence_threshold``: which pixels stop at this stage, and which go on to the next.

For each active pixel: softmax over the classes, its max (``confidence``) and argmax (``labels``),
``stop = active & (confidence >= rho)``, ``next_active = active & ~stop``, and the compacted
list of ``next_active`` pixels (``next_index``) that the next stage's region convolutions use.
Masks carry no gradient: the op runs without autograd.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..kernels import confidence_threshold_forward_torch
from ._backend import resolve_backend, triton_confidence


class _ThresholdFields(NamedTuple):
    labels: torch.Tensor
    confidence: torch.Tensor
    stop: torch.Tensor
    next_active: torch.Tensor


class ThresholdResult(_ThresholdFields):
    """``(labels, confidence, stop, next_active)``, each ``(N, H, W)``; plus ``next_index``, the
    sorted flat indices (into N*H*W) of ``next_active``, outside the tuple so that it unpacks as four."""

    next_index: torch.Tensor


@torch.library.custom_op("sparsecascade::confidence_threshold", mutates_args=())
def _confidence_threshold_op(
    rows: torch.Tensor, rho: float, active: Optional[torch.Tensor], backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel = triton_confidence() if backend == "triton" else confidence_threshold_forward_torch
    labels, confidence, stop, next_active, next_idx = kernel(rows, rho, active)
    return labels, confidence, stop, next_active, next_idx


@_confidence_threshold_op.register_fake
def _(rows, rho, active, backend):
    m = rows.shape[0]
    n_next = torch.library.get_ctx().new_dynamic_size()
    return (
        rows.new_empty(m, dtype=torch.int64),
        rows.new_empty(m, dtype=torch.float32),
        rows.new_empty(m, dtype=torch.bool),
        rows.new_empty(m, dtype=torch.bool),
        rows.new_empty(n_next, dtype=torch.int64),
    )


def confidence_threshold(
    logits: torch.Tensor, rho: float, active: Optional[torch.Tensor] = None, backend: str = "auto"
) -> ThresholdResult:
    """Fused softmax-confidence threshold over ``logits`` (N, C, H, W). See the module docstring.

    Outside ``active`` (bool (N, H, W); None = every pixel) labels are -1, confidence 0 and nothing
    stops. ``rho`` in [0, 1]; rho = 1 stops only pixels whose softmax is exactly one-hot in fp32.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor (N, C, H, W), got {getattr(logits, 'shape', logits)!r}")
    if logits.shape[1] < 1:
        raise ValueError(f"logits: expected at least one class in dim 1, got shape {tuple(logits.shape)}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or math.isnan(rho) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a number in [0, 1], got {rho!r}")
    n, c, h, w = logits.shape
    if active is not None:
        if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
            got = active.dtype if isinstance(active, torch.Tensor) else type(active).__name__
            raise TypeError(f"active: expected a torch.bool tensor of shape {(n, h, w)}, got {got}")
        if tuple(active.shape) != (n, h, w):
            raise ValueError(f"active: expected shape (N, H, W) = {(n, h, w)}, got {tuple(active.shape)}")
        if active.device != logits.device:
            raise ValueError(f"active: expected device {logits.device} (the logits'), got {active.device}")
        active = active.reshape(-1).contiguous()
    backend = resolve_backend(backend, logits.device)
    rows = logits.detach().permute(0, 2, 3, 1).reshape(-1, c).contiguous()
    labels, confidence, stop, next_active, next_idx = _confidence_threshold_op(rows, float(rho), active, backend)
    result = ThresholdResult(labels.view(n, h, w), confidence.view(n, h, w), stop.view(n, h, w), next_active.view(n, h, w))
    result.next_index = next_idx
    return result
