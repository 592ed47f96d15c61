"""Region convolution: gather - conv - scatter over an irregular set of active output pixels."""
from .geometry import ConvGeometry
from .torch_twin import apply_epilogue, region_conv2d_backward_torch, region_conv2d_forward_torch

__all__ = ["ConvGeometry", "apply_epilogue", "region_conv2d_forward_torch", "region_conv2d_backward_torch"]
