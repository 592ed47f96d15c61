"""Which kernel implementation runs an op: the Triton kernels or their torch twins."""
from __future__ import annotations

import torch

from ..kernels import TRITON_AVAILABLE, triton_interpreting

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend: str, device: torch.device, argument: str = "backend") -> str:
    """Map ``backend`` to "torch" or "triton" for tensors on ``device``, or raise a clear error.

    ``"auto"`` picks Triton on CUDA (when installed) and the torch path elsewhere. ``"triton"`` on a
    CPU tensor needs Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests run it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{argument}: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and TRITON_AVAILABLE else "torch"
    if backend == "triton":
        if not TRITON_AVAILABLE:
            raise RuntimeError(f"{argument}='triton' but Triton is not installed (pip install triton)")
        if device.type != "cuda" and not triton_interpreting():
            raise RuntimeError(
                f"{argument}='triton' on a {device.type} tensor needs Triton's interpreter: "
                "set TRITON_INTERPRET=1 before importing sparsecascade, or use backend='torch'"
            )
    return backend


def triton_region_conv():
    """The Triton launchers, imported lazily so that the CPU path never needs Triton."""
    from ..kernels.region_conv.triton_backward import region_conv2d_backward_triton
    from ..kernels.region_conv.triton_forward import region_conv2d_forward_triton

    return region_conv2d_forward_triton, region_conv2d_backward_triton


def triton_confidence():
    from ..kernels.confidence.triton_kernel import confidence_threshold_forward_triton

    return confidence_threshold_forward_triton
