"""One backend vocabulary, and which kernel implementation runs an op: Triton or the torch twins.

``Backend`` names every execution backend: "auto", "torch", "triton" (``KernelBackend``: what the
ops take) and "dense" (modules only: every layer computed densely, then masked; the reference the
sparse paths are tested against). ``check_backend`` is the one check of a backend argument.

The Triton launchers (``triton_region_conv()``, ``triton_confidence()``) are imported lazily, so
that the CPU path never needs Triton. ``ops/library.py`` registers the kernels as
``torch.library`` ops.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ..kernels import TRITON_AVAILABLE, triton_interpreting

KernelBackend = Literal["auto", "torch", "triton"]
Backend = Literal[KernelBackend, "dense"]
KERNEL_BACKENDS: tuple[str, ...] = get_args(KernelBackend)  # ("auto", "torch", "triton")
BACKENDS: tuple[str, ...] = get_args(Backend)  # ("auto", "torch", "triton", "dense")


def check_backend(backend: str, allowed: tuple[str, ...] = BACKENDS, argument: str = "backend") -> str:
    """``backend`` if it is one of ``allowed``, else ``ValueError("backend: expected one of (...), got 'x'")``."""
    if backend not in allowed:
        raise ValueError(f"{argument}: expected one of {allowed}, got {backend!r}")
    return backend


# What the Triton region kernels take (their launchers assert it); float64 runs the torch twins.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_backend(backend: str, device: torch.device, argument: str = "backend") -> str:
    """Map ``backend`` (a ``KernelBackend``) to "torch" or "triton" for tensors on ``device``, or raise
    a clear error.

    ``"auto"`` picks Triton on CUDA (when installed) and the torch path elsewhere. ``"triton"`` on a
    CPU tensor needs Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests run it.
    """
    check_backend(backend, KERNEL_BACKENDS, argument)
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


def triton_input_index():
    """``build_input_index``: the Triton backward's input-side index of an active set."""
    from ..kernels.region_conv.triton_backward import build_input_index

    return build_input_index


def triton_confidence():
    from ..kernels.confidence.triton_kernel import confidence_threshold_forward_triton

    return confidence_threshold_forward_triton
