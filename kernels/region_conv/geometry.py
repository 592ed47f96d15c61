"""Shape arithmetic of a stride-1 convolution, shared by the torch twin and the Triton launchers."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvGeometry:
    """Where the (KH, KW) taps of a stride-1 conv read, for an (H, W) input."""

    height: int
    width: int
    kernel_h: int
    kernel_w: int
    pad_h: int = 0
    pad_w: int = 0
    dil_h: int = 1
    dil_w: int = 1

    @property
    def out_height(self) -> int:
        return self.height + 2 * self.pad_h - self.dil_h * (self.kernel_h - 1)

    @property
    def out_width(self) -> int:
        return self.width + 2 * self.pad_w - self.dil_w * (self.kernel_w - 1)

    @property
    def taps(self) -> int:
        return self.kernel_h * self.kernel_w

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 conv without padding reads exactly the output pixel: no tap table needed."""
        return self.taps == 1 and self.pad_h == 0 and self.pad_w == 0

    def tap_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For output pixels ``idx`` (linear in N*H_out*W_out), the input rows each tap reads.

        Returns ``rows`` (P, taps) int64, linear in N*H*W (clamped to a valid row where the tap
        falls into the zero padding) and ``valid`` (P, taps) bool, False in the padding.
        """
        hw_out = self.out_height * self.out_width
        n = idx // hw_out
        rem = idx - n * hw_out
        oy = rem // self.out_width
        ox = rem - oy * self.out_width
        ky = torch.arange(self.kernel_h, device=idx.device).repeat_interleave(self.kernel_w)
        kx = torch.arange(self.kernel_w, device=idx.device).repeat(self.kernel_h)
        iy = oy[:, None] - self.pad_h + ky[None, :] * self.dil_h
        ix = ox[:, None] - self.pad_w + kx[None, :] * self.dil_w
        valid = (iy >= 0) & (iy < self.height) & (ix >= 0) & (ix < self.width)
        rows = (n[:, None] * self.height + iy.clamp(0, self.height - 1)) * self.width + ix.clamp(0, self.width - 1)
        return rows, valid

    def tap_table(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, padding)``: ``tap_rows(idx)``'s rows, and the flat positions in ``rows.view(-1)`` of
        the taps that fall into the zero padding (a border band, usually few), which a gather zeroes."""
        rows, valid = self.tap_rows(idx)
        return rows, (~valid).reshape(-1).nonzero().squeeze(1)
