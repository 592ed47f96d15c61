"""``model.segment(image)``: one image in (path, PIL image or (H, W, 3) uint8 array), labels out.

Reads the image upright (EXIF orientation) as 8-bit RGB whatever its mode (16-bit and float grey
scaled, palette, CMYK, alpha dropped: ``sparsecascade.data.images``), applies the model's
normalization (and, when its config has ``shortest_edge``, resizes the image so that its shorter
side has that many pixels, the scale the model was trained at, with the longer side capped at
``longest_edge``, by default ``LONGEST_EDGE_RATIO`` times the shorter: a 1 x 400 strip is not blown
up to 180 x 72000), runs the cascade, and returns the labels at the image's own size with the stage
map and the per-stage stop fractions, plus pictures: ``colorize()``, ``overlay()`` and ``stage_picture()``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

LONGEST_EDGE_RATIO = 4  # default cap of the longer side, in units of the shorter one (config "longest_edge")
STAGE_COLORS = np.array([[0, 0, 0], [46, 204, 113], [241, 196, 15], [231, 76, 60], [52, 152, 219],
                         [155, 89, 182]], dtype=np.uint8)  # stage 1 green, 2 yellow, 3 red, ...


def default_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map, for models without a palette of their own."""
    from .data.datasets import voc_palette

    return np.asarray(voc_palette(num_classes), dtype=np.uint8).reshape(num_classes, 3)


def load_image(image) -> np.ndarray:
    """A path, PIL image (any mode) or uint8 array ((H, W), (H, W, 3) or (H, W, 4)) as (H, W, 3) uint8 RGB."""
    from PIL import Image, ImageOps

    from .data.images import array_to_rgb, read_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    raise TypeError(f"image: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def inference_size(height: int, width: int, shortest_edge: int, longest_edge: Optional[int] = None) -> tuple[int, int]:
    """(h, w) with the shorter side ``shortest_edge`` unless the longer one would exceed ``longest_edge``
    (default ``LONGEST_EDGE_RATIO * shortest_edge``): then the longer side is ``longest_edge``."""
    longest = longest_edge or LONGEST_EDGE_RATIO * shortest_edge
    scale = min(shortest_edge / min(height, width), longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class Segmentation:
    image: np.ndarray  # (H, W, 3) uint8, the input
    labels: np.ndarray  # (H, W) int64 class ids
    stage_map: np.ndarray  # (H, W) uint8: the stage (1-based) that decided each pixel
    stop_fractions: list  # share of pixels decided at each stage
    palette: np.ndarray  # (num_classes, 3) uint8
    class_names: list
    ms: float  # time of the model's forward pass

    def colorize(self):
        """The label map in the model's palette, as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.palette[self.labels])

    def overlay(self, alpha: float = 0.5):
        """The colour label map blended over the image."""
        from PIL import Image

        blend = (1 - alpha) * self.image.astype(np.float32) + alpha * self.palette[self.labels].astype(np.float32)
        return Image.fromarray(blend.round().astype(np.uint8))

    def stage_picture(self, alpha: float = 0.6):
        """Which stage decided each pixel (green 1, yellow 2, red 3) over a grey copy of the image."""
        from PIL import Image

        grey = self.image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
        colors = STAGE_COLORS[np.minimum(self.stage_map, len(STAGE_COLORS) - 1)].astype(np.float32)
        return Image.fromarray(((1 - alpha) * grey + alpha * colors).round().astype(np.uint8))


def segment(model, image, rho=None) -> Segmentation:
    """Segment one image with an LC model (see the module docstring)."""
    rgb = load_image(image)
    device = next(model.parameters()).device
    mean = torch.tensor(getattr(model, "mean", (0.0, 0.0, 0.0)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model, "std", (1.0, 1.0, 1.0)), device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float().div_(255)
    x = (x - mean) / std
    h, w = rgb.shape[:2]
    config = getattr(model, "config", {}) or {}
    edge = config.get("shortest_edge")  # the scale the model was trained at, as HF image processors say it
    if edge:
        size = inference_size(h, w, edge, config.get("longest_edge"))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h)
    x = x.contiguous(memory_format=torch.channels_last)
    was_training, old_rho = model.training, model.rho
    model.eval()
    if rho is not None:
        model.rho = rho
    try:
        with torch.no_grad():
            if hasattr(model, "stage_dense_macs"):  # counted once per input shape: keep it out of the timing
                model.stage_dense_macs(x)
            start = time.perf_counter()
            out = model(x)
            ms = (time.perf_counter() - start) * 1e3
    finally:
        model.rho = old_rho
        model.train(was_training)
    labels = out.labels
    if tuple(labels.shape[-2:]) != (h, w):  # the logits, not the labels, are resized: smooth boundaries
        labels = F.interpolate(out.logits, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    stage_map = F.interpolate(out.stage_map[:, None].float(), size=(h, w), mode="nearest")[0, 0]
    num_classes = out.logits.shape[1]
    palette = np.asarray(config.get("palette") or default_palette(num_classes), dtype=np.uint8)
    names = list(config.get("class_names") or [f"class {i}" for i in range(num_classes)])
    return Segmentation(rgb, labels[0].cpu().numpy(), stage_map.to(torch.uint8).cpu().numpy(),
                        list(out.stop_fractions), palette, names, ms)
