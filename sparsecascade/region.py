"""Region execution of ordinary modules: ``convert_to_region`` and the modules it puts in place.

A converted module computes exactly what it computed before when called on its own (densely).
Inside ``active_region(mask)`` it follows DESIGN.md section 2 instead: every convolution runs as a
region convolution on the active set (resampled to the layer's output size), a frozen BatchNorm
is folded into the convolution before it or applied only inside the region, pooling is computed
and masked, and zero-preserving operations (ReLU, concatenation, residual add) are left as they are.
So every layer's output is zero outside the region (a residual block passes its input through,
activated as the block activates it): this is not "the stage run densely, then masked".

``convert_to_region`` refuses, before changing anything, a layer it cannot run exactly this way
(an ``nn.Conv2d`` subclass, a BatchNorm without running statistics, a normalisation over space,
any other layer with no rule that is not known to map zero to zero pixel by pixel), naming the
layer's dotted path. ``dense_modules=`` opts such a layer in to running densely with its output
masked; ``register_region_converter`` teaches it a type of your own.

    with active_region(mask, backend="auto") as region:
        y = converted_stage(x)
    region.macs   # multiply-accumulates executed (what the kernels were given)
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn

from .frozen_bn import FrozenBatchNorm2d
from .ops import MacCount, RegionIndex, count_macs, record_macs
from .ops.region_conv import check_region_conv_args, run_region_conv

EXECUTION_BACKENDS = ("auto", "torch", "triton", "dense")


@dataclass
class RegionState:
    """The active set of the stage being run, its backend, and the MACs it executed.

    ``macs``: executed (the rows each convolution handed to its kernel, every output pixel of a
    convolution run densely); ``dense_macs``: what the same convolutions execute on every pixel.
    """

    index: Optional[RegionIndex]  # None: every pixel (dense, still counted)
    backend: str = "auto"
    executed: MacCount = field(default_factory=MacCount)
    dense_macs: int = 0

    @property
    def mask(self) -> Optional[torch.Tensor]:
        return None if self.index is None else self.index.mask

    @property
    def macs(self) -> int:
        return self.executed.macs

    def index_at(self, size: tuple[int, int]) -> Optional[RegionIndex]:
        """The active set at a layer's output size: nearest for upsampling, "any" for downsampling."""
        return None if self.index is None else self.index.at(size)

    def mask_at(self, size: tuple[int, int]) -> Optional[torch.Tensor]:
        index = self.index_at(size)
        return None if index is None else index.mask

    def count_dense_conv(self, weight_shape, output: torch.Tensor) -> None:
        """A convolution that computed every pixel of ``output``: executed and dense MACs alike."""
        rows = output.shape[0] * output.shape[2] * output.shape[3]
        record_macs(rows, weight_shape)
        self.count_dense_macs(rows, weight_shape)

    def count_dense_macs(self, rows: int, weight_shape) -> None:
        c_out, c_in, kh, kw = weight_shape
        self.dense_macs += int(rows) * c_out * c_in * kh * kw


_CURRENT: contextvars.ContextVar[Optional[RegionState]] = contextvars.ContextVar("sparsecascade_region", default=None)
# How many active_region blocks are open, in all threads. While none is, current_region() is None
# without reading the ContextVar, which torch.compile cannot trace: a converted module called outside
# any region (stage 1 of a compiled LayerCascade) then compiles into one graph, guarded on this int.
_open_regions = 0
_open_regions_lock = threading.Lock()


def _count_open_regions(step: int) -> None:
    global _open_regions
    with _open_regions_lock:
        _open_regions += step


@contextlib.contextmanager
def active_region(region: Union[torch.Tensor, RegionIndex, None], backend: str = "auto"):
    """Run converted modules on the active set ``region``: a bool (N, h, w) mask, its ``RegionIndex``
    (built once per stage, shared by every layer), or None for all pixels."""
    if backend not in EXECUTION_BACKENDS:
        raise ValueError(f"backend: expected one of {EXECUTION_BACKENDS}, got {backend!r}")
    if isinstance(region, torch.Tensor):
        if region.dtype != torch.bool or region.dim() != 3:
            raise TypeError(f"region: expected a bool tensor (N, h, w), a RegionIndex or None, got "
                            f"{region.dtype} {tuple(region.shape)}")
        region = RegionIndex(region)
    elif region is not None and not isinstance(region, RegionIndex):
        raise TypeError(f"region: expected a bool tensor (N, h, w), a RegionIndex or None, got {type(region).__name__}")
    with count_macs() as executed:
        state = RegionState(region, backend, executed)
        token = _CURRENT.set(state)
        _count_open_regions(1)
        try:
            yield state
        finally:
            _count_open_regions(-1)
            _CURRENT.reset(token)


def current_region() -> Optional[RegionState]:
    """The active set of the stage being run in this thread (None outside ``active_region``)."""
    if _open_regions == 0:
        return None
    return _CURRENT.get()


def _mask_outside(y: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``y`` inside ``mask``, zero outside it (NaN or not)."""
    if mask is None:
        return y
    return torch.where(mask[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))


class RegionConv2d(nn.Conv2d):
    """An nn.Conv2d with an optional fused epilogue, run as a region convolution inside ``active_region``.

    ``relu(residual + res_scale * ((conv(x) + bias) * bn_scale + bn_shift))``, ``residual`` passed to
    ``forward``. Made from an existing conv by ``from_conv``, sharing its parameters under the same
    names (checkpoints keep loading). A folded frozen BatchNorm stays where it was, as a
    ``FoldedBatchNorm`` (identity, same buffer names). When gradients flow, its affine map is applied
    in the op's epilogue to the raw parameters, so that training the conv stays exact; for inference
    it is baked into a cached copy of the weights (``prepared_weights``). Inside a region the
    convolution's output is zero outside it, before the residual and the ReLU are applied.
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
        new._prepared = None  # (key, (weight, bias)): see prepared_weights
        new._checked = {}  # kind of call -> its ConvGeometry: see forward
        return new

    def extra_repr(self) -> str:
        extra = ["bn" if self.folded_bn else "", "relu" if self.fused_relu else ""]
        return ", ".join([super().extra_repr()] + [e for e in extra if e])

    def macs_per_pixel(self) -> int:
        return self.in_channels // self.groups * self.out_channels * self.kernel_size[0] * self.kernel_size[1]

    def _needs_autograd(self) -> bool:
        return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (self.weight, self.bias))

    def prepared_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight, bias) with the folded frozen BN's affine baked in, channels_last, in ``dtype``.

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
            weight, bias = self.weight, self.bias
            if bn is not None:
                scale, shift = bn.scale_shift()
                weight = weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
                bias = shift if bias is None else bias * scale + shift
            weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
            prepared = (weight, None if bias is None else bias.to(dtype).contiguous())
        self._prepared = (key, prepared)
        return prepared

    def _conv_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The dense convolution with the folded frozen BN's affine: one pass over the output."""
        if not self._needs_autograd() and not torch.compiler.is_compiling():
            return self._conv_forward(x, *self.prepared_weights(self.weight.dtype))
        weight, bias = self.weight, self.bias
        if self.folded_bn:
            scale, shift = self.folded_bn[0].scale_shift()
            weight = weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
            bias = (shift if bias is None else bias * scale + shift).to(weight.dtype)
        return self._conv_forward(x, weight, bias)

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
            return self._epilogue(_mask_outside(y, region.mask_at(tuple(y.shape[-2:]))), residual)
        h_out = x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1)
        w_out = x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1)
        index = region.index_at((h_out, w_out))
        region.count_dense_macs(x.shape[0] * h_out * w_out, self.weight.shape)  # executed: counted by the op
        if not self._needs_autograd() and not torch.compiler.is_compiling():
            (weight, bias), scale, shift = self.prepared_weights(x.dtype), None, None
        else:  # training: the raw parameters, the BN affine applied in the op's epilogue (exact gradients)
            scale, shift = self.folded_bn[0].scale_shift() if self.folded_bn else (None, None)
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


def fold(conv: nn.Conv2d, bn: Optional[nn.Module] = None, relu: bool = False, res_scale: float = 1.0):
    """(RegionConv2d, FoldedBatchNorm or None) for a conv -> frozen BN (-> ReLU) run."""
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"conv: expected an nn.Conv2d to fold, got {type(conv).__name__}")
    if bn is not None and not _is_frozen_batchnorm(bn):
        raise TypeError(f"bn: expected a frozen BatchNorm to fold into the convolution, got {type(bn).__name__}; "
                        "freeze it first (sparsecascade.models.freeze_batchnorm, as LayerCascade does)")
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
    return _mask_outside(output, region.mask_at(tuple(output.shape[-2:])))


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


def _is_frozen_batchnorm(m: nn.Module) -> bool:
    """Only a frozen BatchNorm is a constant affine map that may be folded (a live one uses batch statistics)."""
    return isinstance(m, FrozenBatchNorm2d) and not isinstance(m, FoldedBatchNorm)


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)

# Leaf layers that act pixel by pixel and map zero to zero: outside the region they keep the zeros,
# so they run as they are. (Not Sigmoid, Hardsigmoid, Softplus, AlphaDropout: f(0) != 0.)
ZERO_PRESERVING = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)

# Normalisations whose statistics are taken over space: on a region they would depend on the region.
SPATIAL_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
                 nn.CrossMapLRN2d)

# Converters for typed blocks (registered by the backbone files): type -> fn(module) -> module.
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
    register = f"register a converter for it (sparsecascade.region.register_region_converter({kind}))"
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
        if conv and nxt is not None and _is_frozen_batchnorm(nxt) and not _is_dense(nxt):
            after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
            relu = type(after) is nn.ReLU and not _is_dense(after)
            seq._modules[names[i]], seq._modules[names[i + 1]] = fold(child, nxt, relu=relu)
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
