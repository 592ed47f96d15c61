"""Conversion of ordinary modules to region execution: ``convert_to_region`` and its rules.

A converted module computes exactly what it computed before when called on its own (densely).
Inside ``active_region(mask)`` (``nn/state.py``) it follows DESIGN.md section 2 instead: every
convolution runs as a ``RegionConv2d`` (``nn/region_conv.py``) on the active set (resampled to the
layer's output size), a frozen BatchNorm (``nn/frozen_bn.py``) is folded into the convolution before
it (``fuse_conv_bn``) or applied and masked, pooling is computed and masked, and zero-preserving
operations (ReLU, concatenation, residual add) are left as they are. So every layer's output is zero
outside the region (a residual block passes its input through, activated as the block activates
it): this is not "the stage run densely, then masked".

``convert_to_region`` refuses, before changing anything, a layer it cannot run exactly this way
(an ``nn.Conv2d`` subclass, a BatchNorm without running statistics, a normalisation over space,
any other layer with no rule that is not known to map zero to zero pixel by pixel), naming the
layer's dotted path. ``dense_modules=`` opts such a layer in to running densely with its output
masked; ``register_region_converter`` teaches it a type of your own (the backbone families register
their blocks' converters beside the blocks, e.g. ``models/resnet.py``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn

from .frozen_bn import FoldedBatchNorm, FrozenBatchNorm2d, is_foldable_batchnorm
from .region_conv import RegionConv2d
from .state import current_region


def fuse_conv_bn(conv: nn.Conv2d, bn: Optional[nn.Module] = None, relu: bool = False, res_scale: float = 1.0):
    """(RegionConv2d, FoldedBatchNorm or None) for a conv -> frozen BN (-> ReLU) run: the conv with
    the BN's affine map, the ReLU and a residual scale fused into its epilogue; the BN left in place,
    folded (identity, its buffers kept under their names)."""
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"conv: expected an nn.Conv2d to fold, got {type(conv).__name__}")
    if bn is not None and not is_foldable_batchnorm(bn):
        raise TypeError(f"bn: expected a frozen BatchNorm to fold into the convolution, got {type(bn).__name__}; "
                        "freeze it first (sparsecascade.nn.freeze_batchnorm, as LayerCascade does)")
    folded = FoldedBatchNorm(bn) if bn is not None else None
    return RegionConv2d.from_conv(conv, folded, relu=relu, res_scale=res_scale), folded


# -- layers run as they are, computed and masked, or densely at the user's request ------------------

def _mask_output_hook(module, inputs, output):
    """Forward hook for a layer that does not map zero to zero (an unfolded BatchNorm, a pooling):
    inside ``active_region`` its output is masked to the region. A hook, not a wrapper, so that the
    layer keeps its type and its parameter names."""
    region = current_region()
    if region is None:
        return output
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise TypeError(f"{_dense_name(module)}: a layer masked to the region must return one (N, C, h, w) "
                        f"tensor, got {type(output).__name__}")
    return region.zero_outside(output)


def mask_outside_region(module: nn.Module) -> nn.Module:
    """Make ``module``'s output zero outside the active region (idempotent)."""
    if not getattr(module, "_sparsecascade_masked", False):
        module.register_forward_hook(_mask_output_hook)
        module._sparsecascade_masked = True
    return module


def _count_dense_conv_hook(conv, inputs, output):
    region = current_region()
    if region is not None:
        region.count_dense_conv(conv.weight.shape, output)


def run_densely(module: nn.Module) -> nn.Module:
    """Run ``module`` as it is on every pixel and mask its output to the region (idempotent); the
    convolutions inside it count their MACs as dense."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m, RegionConv2d) and not getattr(m, "_sparsecascade_counted", False):
            m.register_forward_hook(_count_dense_conv_hook)
            m._sparsecascade_counted = True
    return mask_outside_region(module)


def _dense_name(module: nn.Module) -> str:
    name = getattr(module, "_sparsecascade_dense", None)
    return name if isinstance(name, str) else type(module).__name__


def _is_dense(module: nn.Module) -> bool:
    return bool(getattr(module, "_sparsecascade_dense", False))


def mark_dense_modules(module: nn.Module, dense_modules: Iterable[Union[type, str]]) -> None:
    """Mark the submodules of ``module`` to run densely: those of the given types, or at the given
    dotted paths (relative to ``module``). Raises if an entry is neither, or a path names nothing."""
    if isinstance(dense_modules, (str, type)):
        dense_modules = [dense_modules]
    types, names = [], set()
    for entry in dense_modules:
        if isinstance(entry, type) and issubclass(entry, nn.Module):
            types.append(entry)
        elif isinstance(entry, str):
            names.add(entry)
        else:
            raise TypeError(f"dense_modules: expected nn.Module types or dotted module names, got {entry!r}")
    if not types and not names:
        return
    found = set()
    for name, m in module.named_modules():
        if name in names or isinstance(m, tuple(types)):
            m._sparsecascade_dense = name or type(m).__name__
            found.add(name)
    if names - found:
        raise ValueError(f"dense_modules: {sorted(names - found)} name no submodule "
                         "(expected dotted paths as in named_modules(), e.g. 'stages.1.0.norm')")


# -- which layers can run on a region ----------------------------------------------------------------

def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)

# Leaf layers that act pixel by pixel and map zero to zero: outside the region they keep the zeros,
# so they run as they are. (Not Sigmoid, Hardsigmoid, Softplus, AlphaDropout: f(0) != 0; a Hardtanh
# only while its range holds 0, checked in _refusal.)
ZERO_PRESERVING = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)

# Normalisations whose statistics are taken over space: on a region they would depend on the region.
SPATIAL_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
                 nn.CrossMapLRN2d)

# Converters for typed blocks (registered by the backbone family modules beside their blocks, and by
# users): type -> fn(module) -> module.
_CONVERTERS: dict[type, Callable[[nn.Module], nn.Module]] = {}


def register_region_converter(module_type: type):
    """Register how to convert ``module_type`` (e.g. a residual block, to fuse its epilogue).

    ``fn(module) -> module`` makes the module compute DESIGN.md section 2 inside ``active_region``;
    the identity (``lambda m: m``) declares a layer of your own that maps zero to zero pixel by pixel.
    """

    def decorator(fn):
        _CONVERTERS[module_type] = fn
        return fn

    return decorator


def _refusal(m: nn.Module, path: str) -> Optional[str]:
    """Why ``m`` cannot run exactly on a region (None if it can), and what to do about it."""
    kind = type(m).__name__
    opt_in = (f"pass dense_modules=[{kind}] or dense_modules=[{path!r}] to run it densely and mask its output"
              if path else f"pass dense_modules=[{kind}] to run it densely and mask its output")
    register = f"register a converter for it (sparsecascade.nn.register_region_converter({kind}))"
    if type(m) in _CONVERTERS or isinstance(m, (RegionConv2d, FoldedBatchNorm)) or type(m) is nn.Conv2d:
        return None
    if isinstance(m, nn.Conv2d):
        return f"{kind} is an nn.Conv2d subclass, which convert_to_region cannot run as a region convolution; {register} or {opt_in}"
    if _is_batchnorm(m):
        if getattr(m, "running_mean", None) is None or getattr(m, "running_var", None) is None:
            return (f"{kind} without running statistics (track_running_stats=False) normalises with batch "
                    f"statistics, which would depend on the region; give it running statistics or {opt_in}")
        return None
    if isinstance(m, SPATIAL_NORMS):
        return f"{kind} normalises over space, so its statistics would depend on the region; replace it or {opt_in}"
    if isinstance(m, nn.Hardtanh) and not m.min_val <= 0.0 <= m.max_val:
        zero_to = min(max(0.0, m.min_val), m.max_val)
        return (f"{kind}(min_val={m.min_val}, max_val={m.max_val}) maps zero to {zero_to}, so its output outside "
                f"the region would not be zero; {opt_in}")
    if isinstance(m, _POOLS) or type(m) in ZERO_PRESERVING:
        return None
    owns_tensors = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
    if next(m.children(), None) is not None and not owns_tensors:
        return None  # a container: its children are checked, its forward combines them
    return f"{kind} has no region rule and is not known to map zero to zero pixel by pixel; {register} or {opt_in}"


def check_region_convertible(module: nn.Module) -> None:
    """Raise a ValueError naming the first submodule (dotted path) that cannot run exactly on a region.

    Submodules marked to run densely are not looked into. Functional calls inside a module's own
    forward (``torch.sigmoid(x)``) cannot be seen: they must map zero to zero, or be masked by you.
    """
    stack = [("", module)]
    while stack:
        path, m = stack.pop()
        if _is_dense(m):
            continue
        why = _refusal(m, path)
        if why is not None:
            raise ValueError(f"{path or 'module'}: {why}")
        children = [(f"{path}.{name}" if path else name, child) for name, child in m.named_children()]
        stack.extend(reversed(children))


def convert_to_region(module: nn.Module, *, dense_modules: Iterable[Union[type, str]] = ()) -> nn.Module:
    """Rewrite ``module`` in place (and return it) so that it runs on the active set.

    nn.Conv2d -> RegionConv2d; a frozen BatchNorm right after a conv in an nn.Sequential is folded into
    it (as a ReLU right after that); other BatchNorms and pooling layers are computed and masked;
    registered block types use their own converter; layers that map zero to zero stay as they are.
    ``dense_modules`` (types, or dotted paths relative to ``module``) run densely, their output masked,
    their convolutions counted as dense MACs. Anything else is refused (ValueError naming its path)
    before ``module`` is changed. Called on its own, the result computes what the module computed before.
    """
    mark_dense_modules(module, dense_modules)
    check_region_convertible(module)
    return _convert(module)


def _has_dense_part(module: nn.Module) -> bool:
    return any(_is_dense(m) for m in module.modules())


def _convert(module: nn.Module) -> nn.Module:
    if _is_dense(module):
        return run_densely(module)
    if isinstance(module, (RegionConv2d, FoldedBatchNorm)):
        return module
    if type(module) in _CONVERTERS and not _has_dense_part(module):  # a fused block needs all its parts
        return _CONVERTERS[type(module)](module)
    if type(module) is nn.Conv2d:
        return RegionConv2d.from_conv(module)
    if _is_batchnorm(module) or isinstance(module, _POOLS):
        return mask_outside_region(module)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        _fuse_sequential(module)
        return module
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child))
    return module


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Fold Conv2d -> frozen BatchNorm (-> ReLU) runs of a Sequential into one RegionConv2d, in place."""
    names = list(seq._modules.keys())
    i = 0
    while i < len(names):
        child = seq._modules[names[i]]
        nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
        conv = type(child) is nn.Conv2d and not _is_dense(child)
        if conv and nxt is not None and is_foldable_batchnorm(nxt) and not _is_dense(nxt):
            after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            relu = type(after) is nn.ReLU and not _is_dense(after)
            seq._modules[names[i]], seq._modules[names[i + 1]] = fuse_conv_bn(child, nxt, relu=relu)
            if relu:
                seq._modules[names[i + 2]] = nn.Identity()
            i += 3 if relu else 2
            continue
        if conv and type(nxt) is nn.ReLU and not _is_dense(nxt):
            seq._modules[names[i]] = RegionConv2d.from_conv(child, relu=True)
            seq._modules[names[i + 1]] = nn.Identity()
            i += 2
            continue
        seq._modules[names[i]] = _convert(child)
        i += 1
