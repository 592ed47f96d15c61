"""sparsecascade: difficulty-aware semantic segmentation with Deep Layer Cascade (Li et al., CVPR 2017).

Region convolutions and the fused confidence threshold (``region_conv2d``, ``confidence_threshold``)
run on Triton kernels on a GPU and on a gather-GEMM-scatter torch path on a CPU.
"""
from .ops import ThresholdResult, confidence_threshold, region_conv2d

__version__ = "0.1.0"

__all__ = ["region_conv2d", "confidence_threshold", "ThresholdResult", "__version__"]
