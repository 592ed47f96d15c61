"""The frozen BatchNorm: BatchNorm2d as a fixed per-channel affine map, and its folded form.

The Deep Layer Cascade trains with BatchNorm statistics *and* affine parameters frozen
(batches of high-resolution maps are small), so a BN layer is just ``x * scale + shift``
(``scale_shift()``) and can be folded into the convolution before it.

One family: :class:`FrozenBatchNorm2d` applies its affine map; :class:`FoldedBatchNorm`, its
subclass, is one whose map the preceding ``RegionConv2d`` applies (``nn/region_conv.py``), so it
computes nothing itself. Code tells them apart with ``isinstance`` (``is_foldable_batchnorm``).

Buffer names are those of :class:`torch.nn.BatchNorm2d` (``weight``, ``bias``,
``running_mean``, ``running_var``) so torchvision / timm checkpoints load unchanged;
``num_batches_tracked`` in a checkpoint is accepted and ignored.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "FoldedBatchNorm", "freeze_batchnorm", "is_foldable_batchnorm"]


class FrozenBatchNorm2d(nn.Module):
    """``BatchNorm2d`` with fixed statistics and affine parameters (all buffers).

    ``forward(x) = x * scale + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale``; it has no trainable parameters and never updates
    its statistics, in train or eval mode. Gradients still flow to the input.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def scale_shift(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, shift)`` of the affine map, each of shape ``(C,)``.

        Computed in float32 (float64 if the buffers are float64), then cast to ``dtype``
        if given. Folded into a preceding conv by ``sparsecascade.kernels.fold_affine``:
        ``w' = w * scale[:, None, None, None]``, ``b' = b * scale + shift`` (``b = 0`` for a
        bias-free conv).
        """
        cdt = torch.float64 if self.running_var.dtype == torch.float64 else torch.float32
        scale = self.weight.to(cdt) * torch.rsqrt(self.running_var.to(cdt) + self.eps)
        shift = self.bias.to(cdt) - self.running_mean.to(cdt) * scale
        if dtype is not None:
            scale, shift = scale.to(dtype), shift.to(dtype)
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(x.dtype)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "FrozenBatchNorm2d":
        """A frozen copy of ``bn`` (statistics and affine parameters copied, same device/dtype)."""
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        out = cls(bn.num_features, eps=bn.eps)
        if kw:
            out = out.to(**kw)
        with torch.no_grad():
            if bn.affine:
                out.weight.copy_(bn.weight.detach())
                out.bias.copy_(bn.bias.detach())
            if bn.track_running_stats and bn.running_mean is not None:
                out.running_mean.copy_(bn.running_mean)
                out.running_var.copy_(bn.running_var)
        return out


class FoldedBatchNorm(FrozenBatchNorm2d):
    """A frozen BatchNorm whose affine map the preceding RegionConv2d applies: identity here.

    The same class as the frozen BatchNorm it replaces (its buffers, shared, under their names, so
    state dicts are unchanged by folding; its ``scale_shift``), except that it computes nothing.
    """

    def __init__(self, bn: FrozenBatchNorm2d):
        nn.Module.__init__(self)
        self.num_features, self.eps = bn.num_features, bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def is_foldable_batchnorm(m: nn.Module) -> bool:
    """A frozen BatchNorm not yet folded: a constant affine map that may be folded into the conv
    before it (a live ``nn.BatchNorm2d`` uses batch statistics; a ``FoldedBatchNorm`` is folded)."""
    return isinstance(m, FrozenBatchNorm2d) and not isinstance(m, FoldedBatchNorm)


def freeze_batchnorm(module: nn.Module, exclude: Iterable[nn.Module] = ()) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` in ``module`` (recursively, in
    place) with a :class:`FrozenBatchNorm2d` carrying the same statistics and affine values.

    Returns the module (a new ``FrozenBatchNorm2d`` if ``module`` itself is a batch norm).
    Already frozen layers, and the modules in ``exclude`` with everything inside them, are left alone.
    """
    return _freeze(module, {id(m) for m in exclude})


def _freeze(module: nn.Module, excluded: set[int]) -> nn.Module:
    if id(module) in excluded:
        return module
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in list(module.named_children()):
        new = _freeze(child, excluded)
        if new is not child:
            setattr(module, name, new)
    return module
