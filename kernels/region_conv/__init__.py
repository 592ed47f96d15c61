"""Region convolution: gather - conv - scatter over an irregular set of active output pixels.

``torch_twin`` (CPU, any device) is imported here; the Triton launchers (``triton_forward``,
``triton_backward``) are imported on first use by the ops layer, so that Triton stays optional.
"""
from .geometry import ConvGeometry
from .torch_twin import apply_epilogue, fold_affine, region_conv2d_backward_torch, region_conv2d_forward_torch

__all__ = ["ConvGeometry", "apply_epilogue", "fold_affine", "region_conv2d_forward_torch", "region_conv2d_backward_torch"]
