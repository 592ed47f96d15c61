"""sparsecascade: difficulty-aware semantic segmentation with Deep Layer Cascade (Li et al., CVPR 2017).

Region convolutions and the fused confidence threshold (``region_conv2d``, ``confidence_threshold``)
run on Triton kernels on a GPU and on a gather-GEMM-scatter torch path on a CPU.
"""
from .ops import RegionIndex, ThresholdResult, confidence_threshold, region_conv2d, region_conv2d_residual
from .nn import RegionConv2d, active_region, convert_to_region
from .cascade import CascadeOutput, CascadeTrainOutput, LayerCascade, default_head
from .factory import create_model, list_models, load_backbone_weights, register_cascade
from . import losses, metrics
from .evaluate import calibrate_rho
from .hub import from_pretrained, push_to_hub, save_pretrained
from .segment import Preprocess, Segmentation, preprocess
from .export import export_dense

__version__ = "0.1.0"

__all__ = [
    "region_conv2d", "region_conv2d_residual", "confidence_threshold", "ThresholdResult", "RegionIndex",
    "RegionConv2d", "active_region", "convert_to_region",
    "LayerCascade", "CascadeOutput", "CascadeTrainOutput", "default_head",
    "create_model", "list_models", "register_cascade", "load_backbone_weights", "losses",
    "from_pretrained", "save_pretrained", "push_to_hub", "Segmentation", "Preprocess", "preprocess",
    "export_dense", "metrics", "calibrate_rho",
    "__version__",
]
