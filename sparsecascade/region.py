"""Region execution of ordinary modules: ``convert_to_region`` and the modules it puts in place.

A converted module computes exactly what it computed before when called on its own (densely).
Inside ``active_region(mask)`` it follows DESIGN.md section 2 instead: every convolution runs as a
region convolution on the active set (resampled to the layer's output size), a frozen BatchNorm
is folded into the convolution before it or applied only inside the region, pooling is computed
and masked, and zero-preserving operations (ReLU, concatenation, residual add) are left as they are.

    with active_region(mask, backend="auto") as region:
        y = converted_stage(x)
    region.macs   # multiply-accumulates executed
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import region_conv2d

EXECUTION_BACKENDS = ("auto", "torch", "triton", "dense")


@dataclass
class RegionState:
    """The active set of the stage being run, its backend, and the MACs it executed."""

    mask: Optional[torch.Tensor]  # bool (N, h, w); None: every pixel (dense, still counted)
    backend: str = "auto"
    macs: int = 0
    _resampled: dict = field(default_factory=dict)

    def mask_at(self, size: tuple[int, int]) -> Optional[torch.Tensor]:
        """The active set at a layer's output size: nearest for upsampling, "any" for downsampling."""
        if self.mask is None or tuple(self.mask.shape[-2:]) == tuple(size):
            return self.mask
        if size not in self._resampled:
            self._resampled[size] = resample_mask(self.mask, size)
        return self._resampled[size]


def resample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a bool (N, h, w) mask to ``size``; a coarse pixel is active if any fine pixel it covers is."""
    m = mask[:, None].float()
    if size[0] <= mask.shape[1] and size[1] <= mask.shape[2]:
        m = F.adaptive_max_pool2d(m, size)
    else:
        m = F.interpolate(m, size=size, mode="nearest")
    return m[:, 0] > 0.5


_CURRENT: contextvars.ContextVar[Optional[RegionState]] = contextvars.ContextVar("sparsecascade_region", default=None)


@contextlib.contextmanager
def active_region(mask: Optional[torch.Tensor], backend: str = "auto"):
    """Run converted modules on the active set ``mask`` (bool (N, h, w), or None for all pixels)."""
    if backend not in EXECUTION_BACKENDS:
        raise ValueError(f"backend: expected one of {EXECUTION_BACKENDS}, got {backend!r}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 3):
        raise TypeError(f"mask: expected a bool tensor (N, h, w) or None, got {getattr(mask, 'shape', mask)!r}")
    state = RegionState(mask, backend)
    token = _CURRENT.set(state)
    try:
        yield state
    finally:
        _CURRENT.reset(token)


def current_region() -> Optional[RegionState]:
    return _CURRENT.get()


def _mask_outside(y: torch.Tensor, mask: Optional[torch.Tensor], fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    if mask is None:
        return y
    return torch.where(mask[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device) if fill is None else fill)


class RegionConv2d(nn.Conv2d):
    """An nn.Conv2d with an optional fused epilogue, run as a region convolution inside ``active_region``.

    ``relu(residual + res_scale * ((conv(x) + bias) * bn_scale + bn_shift))``, ``residual`` passed to
    ``forward``. Made from an existing conv by ``from_conv``, sharing its parameters under the same
    names (checkpoints keep loading). A folded frozen BatchNorm stays where it was, as a
    ``FoldedBatchNorm`` (identity, same buffer names); its affine map is applied in this epilogue,
    never baked into the weights, so that training the conv stays exact.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: Optional["FoldedBatchNorm"] = None, relu: bool = False,
                  res_scale: float = 1.0) -> "RegionConv2d":
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        # channels_last weights: the region GEMM reads (C_out, KH*KW*C_in) rows of them without a copy,
        # and the dense conv (oneDNN) prefers them too
        new.weight.data = new.weight.data.contiguous(memory_format=torch.channels_last)
        new.folded_bn = (bn,) if bn is not None else ()  # a tuple: a reference, not a submodule
        new.fused_relu = relu
        new.res_scale = res_scale
        return new

    def extra_repr(self) -> str:
        extra = ["bn" if self.folded_bn else "", "relu" if self.fused_relu else ""]
        return ", ".join([super().extra_repr()] + [e for e in extra if e])

    def macs_per_pixel(self) -> int:
        return self.in_channels // self.groups * self.out_channels * self.kernel_size[0] * self.kernel_size[1]

    def _dense(self, x, residual):
        weight, bias = self.weight, self.bias
        if self.folded_bn:  # the frozen BN's affine folded into the conv: one pass over the output
            scale, shift = self.folded_bn[0].scale_shift()
            weight = weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
            bias = (shift if bias is None else bias * scale + shift).to(weight.dtype)
        y = self._conv_forward(x, weight, bias)
        if residual is not None:
            y = torch.add(residual, y, alpha=self.res_scale)
        return torch.relu(y) if self.fused_relu else y

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        region = current_region()
        if region is None:
            return self._dense(x, residual)
        stride_one = (self.stride == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                      and isinstance(self.padding, tuple))
        if region.mask is None or region.backend == "dense" or not stride_one:
            y = self._dense(x, residual)
            mask = region.mask_at(tuple(y.shape[-2:]))
            region.macs += self.macs_per_pixel() * (y.shape[0] * y.shape[2] * y.shape[3])
            # outside the region: zero, or the residual passed through (its epilogue not applied)
            return _mask_outside(y, mask, residual)
        h_out = x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1)
        w_out = x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1)
        mask = region.mask_at((h_out, w_out))
        region.macs += self.macs_per_pixel() * int(mask.sum())
        scale, shift = self.folded_bn[0].scale_shift() if self.folded_bn else (None, None)
        weight, bias = self.weight, self.bias
        if x.dtype != weight.dtype:  # autocast: the region conv runs in the activation dtype
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        if residual is not None and residual.dtype != x.dtype:
            residual = residual.to(x.dtype)
        return region_conv2d(x, weight, bias, mask, self.padding, self.dilation, backend=region.backend,
                             scale=scale, shift=shift, residual=residual, res_scale=self.res_scale,
                             relu=self.fused_relu)


class FoldedBatchNorm(nn.Module):
    """A frozen BatchNorm whose affine map the preceding RegionConv2d applies: identity here.

    Keeps the BatchNorm's buffers under their names, so state dicts are unchanged by folding.
    """

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach())

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision checkpoints carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fold(conv: nn.Conv2d, bn: Optional[nn.Module] = None, relu: bool = False, res_scale: float = 1.0):
    """(RegionConv2d, FoldedBatchNorm or None) for a conv -> frozen BN (-> ReLU) run."""
    folded = FoldedBatchNorm(bn) if bn is not None else None
    return RegionConv2d.from_conv(conv, folded, relu=relu, res_scale=res_scale), folded


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map of a frozen (or eval-mode) BatchNorm, as constants."""
    if hasattr(bn, "scale_shift"):
        scale, shift = bn.scale_shift()
    else:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    return scale.detach(), shift.detach()


def _mask_output_hook(module, inputs, output):
    """Forward hook for a layer that does not map zero to zero (an unfolded BatchNorm, a pooling):
    inside ``active_region`` its output is masked to the region. A hook, not a wrapper, so that the
    layer keeps its type and its parameter names."""
    region = current_region()
    if region is None:
        return output
    return _mask_outside(output, region.mask_at(tuple(output.shape[-2:])))


def mask_outside_region(module: nn.Module) -> nn.Module:
    """Make ``module``'s output zero outside the active region (idempotent)."""
    if not getattr(module, "_sparsecascade_masked", False):
        module.register_forward_hook(_mask_output_hook)
        module._sparsecascade_masked = True
    return module


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__ == "FrozenBatchNorm2d"


def _is_frozen_batchnorm(m: nn.Module) -> bool:
    """Only a frozen BatchNorm is a constant affine map that may be folded (a live one uses batch statistics)."""
    return type(m).__name__ == "FrozenBatchNorm2d"


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)

# Converters for typed blocks (registered by the backbone files): type -> fn(module) -> module.
_CONVERTERS: dict[type, Callable[[nn.Module], nn.Module]] = {}


def register_region_converter(module_type: type):
    """Register how to convert ``module_type`` (e.g. a residual block, to fuse its epilogue)."""

    def decorator(fn):
        _CONVERTERS[module_type] = fn
        return fn

    return decorator


def convert_to_region(module: nn.Module) -> nn.Module:
    """Rewrite ``module`` in place (and return it) so that it runs on the active set.

    nn.Conv2d -> RegionConv2d; a BatchNorm right after a conv in an nn.Sequential is folded into it
    (as a ReLU right after that); other BatchNorms and pooling layers are computed and masked;
    registered block types use their own converter. Called on its own, the result computes what the
    module computed before.
    """
    converted = _convert_one(module)
    if converted is not module or getattr(module, "_sparsecascade_masked", False):
        return converted
    for name, child in list(module.named_children()):
        if isinstance(child, (RegionConv2d, FoldedBatchNorm)):
            continue
        if isinstance(child, nn.Sequential) and type(child) not in _CONVERTERS:
            _fuse_sequential(child)
            continue
        setattr(module, name, convert_to_region(child))
    return module


def _convert_one(module: nn.Module) -> nn.Module:
    if type(module) in _CONVERTERS:
        return _CONVERTERS[type(module)](module)
    if type(module) is nn.Conv2d:
        return RegionConv2d.from_conv(module)
    if _is_batchnorm(module) or isinstance(module, _POOLS):
        return mask_outside_region(module)
    return module


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Fold Conv2d -> BatchNorm (-> ReLU) runs of a Sequential into one RegionConv2d, in place."""
    names = list(seq._modules.keys())
    i = 0
    while i < len(names):
        child = seq._modules[names[i]]
        nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
        if type(child) is nn.Conv2d and nxt is not None and _is_frozen_batchnorm(nxt):
            after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            relu = isinstance(after, nn.ReLU)
            seq._modules[names[i]], seq._modules[names[i + 1]] = fold(child, nxt, relu=relu)
            if relu:
                seq._modules[names[i + 2]] = nn.Identity()
            i += 3 if relu else 2
            continue
        if type(child) is nn.Conv2d and isinstance(nxt, nn.ReLU):
            seq._modules[names[i]] = RegionConv2d.from_conv(child, relu=True)
            seq._modules[names[i + 1]] = nn.Identity()
            i += 2
            continue
        if isinstance(child, nn.Sequential) and type(child) not in _CONVERTERS:
            _fuse_sequential(child)
        else:
            seq._modules[names[i]] = convert_to_region(child)
        i += 1
