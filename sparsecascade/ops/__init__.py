"""Ops with autograd and device dispatch over the kernels of ``sparsecascade.kernels``."""
from .confidence import ThresholdResult, confidence_threshold
from .dense_fallback import dense_fallback_fraction, set_dense_fallback_fraction
from .region_conv import MacCount, count_macs, record_macs, region_conv2d
from .region_index import RegionIndex, resample_mask

__all__ = ["region_conv2d", "confidence_threshold", "ThresholdResult", "RegionIndex", "resample_mask",
           "dense_fallback_fraction", "set_dense_fallback_fraction", "count_macs", "record_macs", "MacCount"]
