"""Region execution of ordinary modules (DESIGN.md section 2): one job per file.

    state.py        the ambient region state: ``active_region``, ``current_region``, ``RegionState``
    frozen_bn.py    the one frozen BatchNorm: ``FrozenBatchNorm2d``, its folded form, ``freeze_batchnorm``
    region_conv.py  ``RegionConv2d``: a conv with a fused epilogue, run on the active set
    convert.py      ``convert_to_region`` and its rules: converters, refusals, dense opt-ins, masking hooks

Built on ``sparsecascade.ops`` (and ``sparsecascade.kernels``); imports nothing above them.
"""
from .state import RegionState, active_region, current_region
from .frozen_bn import FoldedBatchNorm, FrozenBatchNorm2d, freeze_batchnorm, is_foldable_batchnorm
from .region_conv import RegionConv2d
from .convert import (
    SPATIAL_NORMS,
    ZERO_PRESERVING,
    check_region_convertible,
    convert_to_region,
    fuse_conv_bn,
    mark_dense_modules,
    mask_outside_region,
    register_region_converter,
    run_densely,
)

__all__ = [
    "RegionState", "active_region", "current_region",
    "FrozenBatchNorm2d", "FoldedBatchNorm", "freeze_batchnorm", "is_foldable_batchnorm",
    "RegionConv2d",
    "convert_to_region", "check_region_convertible", "mark_dense_modules", "register_region_converter",
    "fuse_conv_bn", "mask_outside_region", "run_densely", "ZERO_PRESERVING", "SPATIAL_NORMS",
]
