"""The dense convolution followed by a ReLU, in one pass where oneDNN can fuse them.

A dense layer of a converted network (stage 1, which runs on every pixel; a region convolution above
its dense-fallback crossover) is a convolution and then a ReLU. ``F.conv2d(...).relu_()`` reads and
writes the whole output a second time; oneDNN applies the ReLU as a post-op while the output tile is
still in cache (``torch.ops.mkldnn._convolution_pointwise``, the op inductor's CPU backend emits for the
same pattern). Used for float32 CPU tensors when no gradient is recorded (the fused op has no
derivative); anything else takes ``F.conv2d`` and an in-place ReLU, with the same result.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _onednn_fused_conv_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


_FUSED = _onednn_fused_conv_available()


def conv2d_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: Sequence[int],
                dilation: Sequence[int], stride: Sequence[int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding, dilation, groups))`` (zero padding, ints per axis)."""
    records_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (_FUSED and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not records_grad and not torch.compiler.is_compiling()):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), list(stride), list(dilation),
                                                       groups, "relu", [], "")
    y = F.conv2d(x, weight, bias, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups)
    return torch.relu(y) if records_grad else y.relu_()
