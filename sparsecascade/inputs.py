"""What a model accepts as ``model(x)``, checked before any layer runs, with errors naming ``x``.

``x`` must be a floating-point tensor (N, C, H, W) of the model's dtype (any dtype under autocast)
and device, C the in_channels of the first convolution (3 when no convolution says), with finite
values only. An (N, H, W, C) batch (channels last in its shape, as images come from PIL or numpy)
is recognised and named as such; a channels_last *memory format* with an (N, C, H, W) shape is fine.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

DEFAULT_CHANNELS = 3


def first_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    """The first ``nn.Conv2d`` of ``module`` in registration order (stops at the first one found)."""
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def check_image_batch(x, first_stage: nn.Module) -> None:
    """Raise a one-line error naming ``x`` unless it is an image batch that ``first_stage`` can take."""
    conv = first_conv(first_stage)
    channels = conv.in_channels if conv is not None else DEFAULT_CHANNELS
    expected = f"(N, {channels}, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected an image batch tensor {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point image batch {expected}, normalised as the model expects, "
                         f"got {x.dtype} (for 8-bit pixels: x.float() / 255, then the model's mean and std)")
    if x.dim() != 4:
        raise ValueError(f"x: expected an image batch {expected}, got shape {tuple(x.shape)} "
                         f"(for one image (C, H, W): x[None])")
    if x.shape[1] != channels:
        if x.shape[-1] == channels:
            raise ValueError(f"x: expected {expected}, got {tuple(x.shape)}, which looks like (N, H, W, C) with "
                             f"the channels last; use x.permute(0, 3, 1, 2)")
        raise ValueError(f"x: expected {channels} channels {expected}, got shape {tuple(x.shape)}")
    if conv is not None:
        _check_dtype_and_device(x, conv.weight)
    _check_finite(x)


@torch.compiler.disable  # a data-dependent check: run eagerly under torch.compile, not traced (no graph-break warning)
def _check_finite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: the image batch holds NaN or infinite values")


def _check_dtype_and_device(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.device != weight.device:
        raise ValueError(f"x: on {x.device}, but the model is on {weight.device}; move one of them (x.to(...))")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"x: expected {weight.dtype} (the model's dtype), got {x.dtype}; convert it "
                         f"(x.to({weight.dtype})) or the model, or run under torch.autocast")
