"""``RegionConv2d``: an nn.Conv2d that runs as a region convolution inside ``active_region``.

Outside any region it is the convolution it was made from (plus its fused epilogue). Inside one it
computes only the active output pixels (``sparsecascade.ops``' region convolution on the stage's
shared ``RegionIndex``), or, for "dense" and the layers the region op does not run (stride > 1,
groups), every pixel and then the mask. Its folded frozen BatchNorm (``nn/frozen_bn.py``) is folded
into the weights by ``sparsecascade.kernels.fold_affine``, the one fold of the package.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..kernels import fold_affine
from ..ops.region_conv import check_region_conv_args, run_region_conv
from .frozen_bn import FoldedBatchNorm
from .state import current_region


class RegionConv2d(nn.Conv2d):
    """An nn.Conv2d with an optional fused epilogue, run as a region convolution inside ``active_region``.

    ``relu(residual + res_scale * ((conv(x) + bias) * bn_scale + bn_shift))``, ``residual`` passed to
    ``forward``. Made from an existing conv by ``from_conv``, sharing its parameters under the same
    names (checkpoints keep loading). A folded frozen BatchNorm stays where it was, as a
    ``FoldedBatchNorm`` (identity, same buffer names). When gradients flow, its affine map is applied
    to the raw parameters on every call (in the region op's epilogue, or folded into a per-call copy
    of the weights on the dense path), so that training the conv stays exact; for inference it is
    folded into a cached copy of the weights (``prepared_weights``). Built directly,
    ``RegionConv2d(in_channels, out_channels, kernel_size, ..., relu=False, res_scale=1.0)`` takes
    ``nn.Conv2d``'s arguments. Inside a region the
    convolution's output is zero outside it, before the residual and the ReLU are applied.
    """

    def __init__(self, *args, relu: bool = False, res_scale: float = 1.0, **kwargs):
        """As ``nn.Conv2d(in_channels, out_channels, kernel_size, ...)``, with a fused ReLU and residual
        scale (no BatchNorm: ``from_conv`` / ``fuse_conv_bn`` fold one)."""
        super().__init__(*args, **kwargs)
        self._init_region(None, relu, res_scale)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: Optional[FoldedBatchNorm] = None, relu: bool = False,
                  res_scale: float = 1.0) -> "RegionConv2d":
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new._init_region(bn, relu, res_scale)
        return new

    def _init_region(self, bn: Optional[FoldedBatchNorm], relu: bool, res_scale: float) -> None:
        # channels_last weights: the region GEMM reads (C_out, KH*KW*C_in) rows of them without a copy,
        # and the dense conv (oneDNN) prefers them too
        self.weight.data = self.weight.data.contiguous(memory_format=torch.channels_last)
        self.folded_bn = (bn,) if bn is not None else ()  # a tuple: a reference, not a submodule
        self.fused_relu = bool(relu)
        self.res_scale = float(res_scale)
        self._prepared = None  # (key, (weight, bias)): see prepared_weights
        self._checked = {}  # kind of call -> its ConvGeometry: see forward

    def extra_repr(self) -> str:
        extra = ["bn" if self.folded_bn else "", "relu" if self.fused_relu else ""]
        return ", ".join([super().extra_repr()] + [e for e in extra if e])

    def macs_per_pixel(self) -> int:
        return self.in_channels // self.groups * self.out_channels * self.kernel_size[0] * self.kernel_size[1]

    def _needs_autograd(self) -> bool:
        return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (self.weight, self.bias))

    def _bn_scale_shift(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        return self.folded_bn[0].scale_shift() if self.folded_bn else (None, None)

    def prepared_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight, bias) with the folded frozen BN's affine folded in, channels_last, in ``dtype``.

        For inference: built once and reused while the weights, the bias and the BN buffers keep
        their storage and their in-place version counters (an optimizer step, ``load_state_dict``
        or ``.to()`` changes one of them, and the next call builds it again).
        """
        bn = self.folded_bn[0] if self.folded_bn else None
        tensors = [self.weight, self.bias] + ([] if bn is None else [bn.weight, bn.bias, bn.running_mean, bn.running_var])
        key = (dtype,) + tuple((t.data_ptr(), t._version) for t in tensors if t is not None)
        cached = self._prepared
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            weight, bias = fold_affine(self.weight, self.bias, *self._bn_scale_shift())
            weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
            prepared = (weight, None if bias is None else bias.to(dtype).contiguous())
        self._prepared = (key, prepared)
        return prepared

    def _conv_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The dense convolution with the folded frozen BN's affine: one pass over the output."""
        if not self._needs_autograd() and not torch.compiler.is_compiling():
            return self._conv_forward(x, *self.prepared_weights(self.weight.dtype))
        return self._conv_forward(x, *fold_affine(self.weight, self.bias, *self._bn_scale_shift()))

    def _epilogue(self, y: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        if residual is not None:
            y = torch.add(residual, y, alpha=self.res_scale)
        return torch.relu(y) if self.fused_relu else y

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        region = current_region()
        if region is None:
            return self._epilogue(self._conv_bn(x), residual)
        stride_one = (self.stride == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                      and isinstance(self.padding, tuple))
        if region.index is None or region.backend == "dense" or not stride_one:
            y = self._conv_bn(x)  # every output pixel computed (and counted), then masked
            region.count_dense_conv(self.weight.shape, y)
            return self._epilogue(region.zero_outside(y), residual)
        h_out = x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1)
        w_out = x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1)
        index = region.index_at((h_out, w_out))
        region.count_dense_macs(x.shape[0] * h_out * w_out, self.weight.shape)  # executed: counted by the op
        if not self._needs_autograd() and not torch.compiler.is_compiling():
            (weight, bias), scale, shift = self.prepared_weights(x.dtype), None, None
        else:  # training: the raw parameters, the BN affine applied in the op's epilogue (exact gradients)
            scale, shift = self._bn_scale_shift()
            weight, bias = self.weight, self.bias
            if x.dtype != weight.dtype:  # autocast: the region conv runs in the activation dtype
                weight = weight.to(x.dtype)
                bias = None if bias is None else bias.to(x.dtype)
        if residual is not None and residual.dtype != x.dtype:
            residual = residual.to(x.dtype)
        # region_conv2d's checks, once per kind of call (shapes, dtypes, devices): they cost more than a
        # small layer's arithmetic, and a module's own weights and its stage's index pass them by construction
        key = (x.shape, x.dtype, x.device, weight.dtype, weight.device, bias is None, scale is None,
               None if residual is None else (residual.shape, residual.dtype, residual.device), index.mask.shape,
               index.mask.device)
        geometry = self._checked.get(key)
        if geometry is None:
            geometry = self._checked[key] = check_region_conv_args(
                x, weight, bias, index.mask, self.padding, self.dilation, 1, scale, shift, residual)
        return run_region_conv(x, weight, bias, index, geometry, region.backend, scale=scale, shift=shift,
                               residual=residual, res_scale=self.res_scale, relu=self.fused_relu)
