"""Ops with autograd and device dispatch over the kernels of ``sparsecascade.kernels``."""
from .confidence import ThresholdResult, confidence_threshold
from .region_conv import DENSE_FALLBACK_FRACTION, MacCount, count_macs, record_macs, region_conv2d

__all__ = ["region_conv2d", "confidence_threshold", "ThresholdResult", "DENSE_FALLBACK_FRACTION",
           "count_macs", "record_macs", "MacCount"]
