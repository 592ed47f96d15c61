"""Ops with autograd and device dispatch over the kernels of ``sparsecascade.kernels``.

    _backend.py        the backend vocabulary (``Backend``, ``check_backend``) and the Triton launchers
    region_conv.py     ``region_conv2d`` (and its residual form): checks, dispatch, the custom op and its autograd
    region_index.py    ``RegionIndex``: a stage's active set, compacted once, its tap tables cached
    confidence.py      ``confidence_threshold``: the fused softmax threshold and compaction
    dense_fallback.py  the measured active fraction above which "auto" runs the dense convolution (CPU, GPU)
    macs.py            ``count_macs``: the multiply-accumulates executed
    library.py         the kernels as ``torch.library`` ops (``triton_ops()``), for torch.compile
"""
from ._backend import BACKENDS, KERNEL_BACKENDS, Backend, KernelBackend, check_backend
from .confidence import ThresholdResult, confidence_threshold
from .dense_fallback import dense_fallback_fraction, set_dense_fallback_fraction
from .macs import MacCount, count_macs, record_macs
from .region_conv import region_conv2d, region_conv2d_residual
from .region_index import RegionIndex, resample_mask
from . import library  # registers the Triton ops at import where Triton runs on a GPU

__all__ = ["region_conv2d", "region_conv2d_residual", "confidence_threshold", "ThresholdResult", "RegionIndex",
           "resample_mask", "dense_fallback_fraction", "set_dense_fallback_fraction", "count_macs", "record_macs", "MacCount",
           "Backend", "KernelBackend", "BACKENDS", "KERNEL_BACKENDS", "check_backend"]
