"""The multiply-accumulate count: what the convolutions in a ``count_macs()`` block executed.

Every region convolution (``ops/region_conv.py``) adds the rows it hands to a kernel, or every
output pixel when it runs the dense convolution; the nn layer (``nn/state.py``) adds the
convolutions it runs densely. Forward only.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence


class MacCount:
    """Multiply-accumulates executed inside one ``count_macs()`` block."""

    def __init__(self) -> None:
        self.macs = 0


_MAC_COUNTS: contextvars.ContextVar[tuple[MacCount, ...]] = contextvars.ContextVar("sparsecascade_macs", default=())


@contextlib.contextmanager
def count_macs() -> Iterator[MacCount]:
    """Count the MACs the convolutions run in this block execute (forward only); blocks nest."""
    count = MacCount()
    token = _MAC_COUNTS.set(_MAC_COUNTS.get() + (count,))
    try:
        yield count
    finally:
        _MAC_COUNTS.reset(token)


def record_macs(rows: int, weight_shape: Sequence[int]) -> None:
    """Add ``rows`` output pixels of a (C_out, C_in, KH, KW) convolution to every open ``count_macs()``."""
    c_out, c_in, kh, kw = weight_shape
    for count in _MAC_COUNTS.get():
        count.macs += int(rows) * c_out * c_in * kh * kw
