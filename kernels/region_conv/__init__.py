"""Region convolution: gather - conv - scatter over an irregular set of active output pixels.

``torch_twin`` (CPU, any device) is imported here; the Triton launchers (``triton_forward``,
``triton_backward``) are imported on first use by the ops layer, so that Triton stays optional.
``dense_conv.conv2d_relu``: the dense convolution + ReLU of the dense paths, fused by oneDNN on a CPU.
"""
from .dense_conv import conv2d_relu
from .geometry import ConvGeometry
from .torch_twin import apply_epilogue, fold_affine, region_conv2d_backward_torch, region_conv2d_forward_torch

__all__ = ["ConvGeometry", "conv2d_relu", "apply_epilogue", "fold_affine", "region_conv2d_forward_torch", "region_conv2d_backward_torch"]
