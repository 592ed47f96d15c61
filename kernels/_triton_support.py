"""Whether Triton can run here, and whether it runs under its CPU interpreter."""
import os

try:  # Triton is optional: the CPU build of torch does not bring it.
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised on machines without triton
    TRITON_AVAILABLE = False


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET=1, i.e. Triton kernels run on CPU tensors (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
