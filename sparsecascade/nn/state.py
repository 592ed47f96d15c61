"""The ambient region state: the active set of the stage being run, read by every converted layer.

``active_region(mask, backend)`` opens it for the current thread (a ``ContextVar``) and counts the
MACs executed inside it; ``current_region()`` reads it (None outside any block). A converted layer
(``nn/region_conv.py``, ``nn/convert.py``) asks it for the active set at its own output size.

    with active_region(mask, backend="auto") as region:
        y = converted_stage(x)
    region.macs        # multiply-accumulates executed (what the kernels were given)
    region.dense_macs  # what the same convolutions execute on every pixel
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from ..ops import Backend, MacCount, RegionIndex, check_backend, count_macs, record_macs


@dataclass
class RegionState:
    """The active set of the stage being run, its backend, and the MACs it executed.

    ``macs``: executed (the rows each convolution handed to its kernel, every output pixel of a
    convolution run densely); ``dense_macs``: what the same convolutions execute on every pixel.
    """

    index: Optional[RegionIndex]  # None: every pixel (dense, still counted)
    backend: Backend = "auto"
    executed: MacCount = field(default_factory=MacCount)
    dense_macs: int = 0

    @property
    def mask(self) -> Optional[torch.Tensor]:
        return None if self.index is None else self.index.mask

    @property
    def macs(self) -> int:
        return self.executed.macs

    def index_at(self, size: tuple[int, int]) -> Optional[RegionIndex]:
        """The active set at a layer's output size: nearest for upsampling, "any" for downsampling."""
        return None if self.index is None else self.index.at(size)

    def mask_at(self, size: tuple[int, int]) -> Optional[torch.Tensor]:
        index = self.index_at(size)
        return None if index is None else index.mask

    def zero_outside(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (N, C, h, w) inside the active set at its size, zero outside it (NaN or not)."""
        mask = self.mask_at(tuple(y.shape[-2:]))
        if mask is None:
            return y
        return torch.where(mask[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))

    def count_dense_conv(self, weight_shape, output: torch.Tensor) -> None:
        """A convolution that computed every pixel of ``output``: executed and dense MACs alike."""
        rows = output.shape[0] * output.shape[2] * output.shape[3]
        record_macs(rows, weight_shape)
        self.count_dense_macs(rows, weight_shape)

    def count_dense_macs(self, rows: int, weight_shape) -> None:
        c_out, c_in, kh, kw = weight_shape
        self.dense_macs += int(rows) * c_out * c_in * kh * kw


_CURRENT: contextvars.ContextVar[Optional[RegionState]] = contextvars.ContextVar("sparsecascade_region", default=None)
# How many active_region blocks are open, in all threads. While none is, current_region() is None
# without reading the ContextVar, which torch.compile cannot trace: a converted module called outside
# any region (stage 1 of a compiled LayerCascade) then compiles into one graph, guarded on this int.
_open_regions = 0
_open_regions_lock = threading.Lock()


def _count_open_regions(step: int) -> None:
    global _open_regions
    with _open_regions_lock:
        _open_regions += step


@contextlib.contextmanager
def active_region(region: Union[torch.Tensor, RegionIndex, None], backend: Backend = "auto"):
    """Run converted modules on the active set ``region``: a bool (N, h, w) mask, its ``RegionIndex``
    (built once per stage, shared by every layer), or None for all pixels. ``backend``: one of
    ``sparsecascade.ops.BACKENDS`` ("dense": every layer computed densely, then masked)."""
    check_backend(backend)
    if isinstance(region, torch.Tensor):
        if region.dtype != torch.bool or region.dim() != 3:
            raise TypeError(f"region: expected a bool tensor (N, h, w), a RegionIndex or None, got "
                            f"{region.dtype} {tuple(region.shape)}")
        region = RegionIndex(region)
    elif region is not None and not isinstance(region, RegionIndex):
        raise TypeError(f"region: expected a bool tensor (N, h, w), a RegionIndex or None, got {type(region).__name__}")
    with count_macs() as executed:
        state = RegionState(region, backend, executed)
        token = _CURRENT.set(state)
        _count_open_regions(1)
        try:
            yield state
        finally:
            _count_open_regions(-1)
            _CURRENT.reset(token)


def current_region() -> Optional[RegionState]:
    """The active set of the stage being run in this thread (None outside ``active_region``)."""
    if _open_regions == 0:
        return None
    return _CURRENT.get()
