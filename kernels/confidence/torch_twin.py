"""Torch-native twin of the fused confidence-threshold kernel. Contract: see ``sparsecascade.kernels``."""
from __future__ import annotations

import torch


def confidence_threshold_forward_torch(logits: torch.Tensor, rho: float, active: torch.Tensor | None):
    """Softmax confidence, label and stop decision per pixel row; compacted next active set.

    ``logits`` (M, C) rows; ``active`` (M,) bool or None. Only active rows are computed.
    """
    m = logits.shape[0]
    labels = torch.full((m,), -1, dtype=torch.int64, device=logits.device)
    confidence = torch.zeros(m, dtype=torch.float32, device=logits.device)
    rows = None if active is None else active.nonzero().squeeze(1)
    sel = logits if rows is None else logits.index_select(0, rows)
    # max softmax probability = 1 / sum(exp(l - max l)); computed on the active rows only.
    sel = sel.float()
    top, arg = sel.max(dim=1)
    conf = 1.0 / torch.exp(sel - top[:, None]).sum(dim=1)
    if rows is None:
        labels.copy_(arg)
        confidence.copy_(conf)
    else:
        labels.index_copy_(0, rows, arg)
        confidence.index_copy_(0, rows, conf)
    stop = confidence >= rho
    if active is not None:
        stop &= active
        next_active = active & ~stop
    else:
        next_active = ~stop
    next_idx = next_active.nonzero().squeeze(1)
    return labels, confidence, stop, next_active, next_idx
