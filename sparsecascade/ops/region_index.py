"""``RegionIndex``: the active set of one stage, built once and read by every region layer.

A stage's active set is a bool mask (N, H, W) at the stage's resolution. Every region convolution
needs it as a sorted list of flat pixel indices, and a convolution with taps also needs, per active
pixel and tap, the input row it reads. Deriving those from the mask in every layer costs a
``nonzero`` (a host synchronisation on a GPU) and an index computation per layer; here they are
derived once per stage and cached:

* ``rows`` and ``count``: the compacted indices (taken from the threshold kernel's compaction when
  the set comes from it) and their number, known on the host once per stage;
* ``at(size)``: the same set at another resolution (a pooled or strided layer), built once;
* ``taps(geometry)``: the tap table of a convolution geometry, built once per geometry and shared
  by every layer of that geometry (as torchsparse caches its kernel maps per stride and spconv
  shares an ``indice_key``); ``input_index(geometry)``, the same for the Triton backward's
  input-side index (its transposed map).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..kernels import ConvGeometry
from ._backend import triton_input_index

__all__ = ["RegionIndex", "resample_mask"]


def resample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a bool (N, h, w) mask to ``size``: a coarse pixel is active if any fine pixel it
    covers is (adaptive max pooling); upsampling takes the nearest pixel."""
    m = mask[:, None].to(torch.float32)
    if size[0] <= mask.shape[1] and size[1] <= mask.shape[2]:
        m = F.adaptive_max_pool2d(m, size)
    else:
        m = F.interpolate(m, size=size, mode="nearest")
    return m[:, 0] > 0.5


class RegionIndex:
    """The active pixels of a batch at one resolution: ``mask`` (N, H, W) bool and its compaction.

    ``RegionIndex(mask)`` compacts the mask (one ``nonzero``); ``RegionIndex(mask, rows=idx)`` takes
    the sorted flat indices (into N*H*W) that a kernel already compacted. ``count`` is a Python int.
    """

    def __init__(self, mask: torch.Tensor, rows: Optional[torch.Tensor] = None):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 3:
            raise TypeError(f"mask: expected a bool tensor (N, H, W), got {getattr(mask, 'shape', mask)!r}")
        if rows is not None and (not isinstance(rows, torch.Tensor) or rows.dtype != torch.int64 or rows.dim() != 1):
            raise TypeError(f"rows: expected an int64 tensor (P,) of flat indices, got {getattr(rows, 'shape', rows)!r}")
        self.mask = mask
        self.rows = mask.reshape(-1).nonzero().squeeze(1) if rows is None else rows
        self.count = int(self.rows.numel())  # the tensor's size: on the host, no synchronisation
        self._at: dict[tuple[int, int], RegionIndex] = {}
        self._taps: dict[ConvGeometry, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inputs: dict[ConvGeometry, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.mask.shape[1]), int(self.mask.shape[2]))

    @property
    def numel(self) -> int:
        return self.mask.numel()

    @property
    def fraction(self) -> float:
        return self.count / self.numel if self.numel else 0.0

    @property
    def is_full(self) -> bool:
        return self.count == self.numel

    def at(self, size: tuple[int, int]) -> "RegionIndex":
        """The set at another spatial ``size`` (``resample_mask``), built once per size."""
        size = (int(size[0]), int(size[1]))
        if size == self.size:
            return self
        if size not in self._at:
            self._at[size] = RegionIndex(resample_mask(self.mask, size))
        return self._at[size]

    def taps(self, geometry: ConvGeometry) -> tuple[torch.Tensor, torch.Tensor]:
        """``geometry.tap_table(rows)`` (whose output size must be this set's), built once per geometry:
        what the torch twins gather through."""
        self._check_output_size(geometry)
        table = self._taps.get(geometry)
        if table is None:
            table = self._taps[geometry] = geometry.tap_table(self.rows)
        return table

    def input_index(self, geometry: ConvGeometry) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The Triton backward's input-side index of this set for ``geometry`` (whose output size must be
        this set's): ``build_input_index(rows, geometry, N)``, the sorted input rows some active pixel
        reads and each output pixel's position in ``rows``, built once per geometry on the device."""
        self._check_output_size(geometry)
        table = self._inputs.get(geometry)
        if table is None:
            table = self._inputs[geometry] = triton_input_index()(self.rows, geometry, int(self.mask.shape[0]))
        return table

    def _check_output_size(self, geometry: ConvGeometry) -> None:
        if (geometry.out_height, geometry.out_width) != self.size:
            raise ValueError(f"geometry: output {geometry.out_height}x{geometry.out_width} does not match the "
                             f"region's {self.size[0]}x{self.size[1]}")

    def __repr__(self) -> str:
        n, h, w = self.mask.shape
        return f"RegionIndex({n}x{h}x{w}, {self.count} active = {100 * self.fraction:.1f}%)"
