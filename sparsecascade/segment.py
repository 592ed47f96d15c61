"""``model.segment(image)``: one image in (path, PIL image or (H, W, 3) uint8 array), labels out.

Applies the model's normalization (and, when its config has ``shortest_edge``, resizes the image
so that its shorter side has that many pixels: the scale the model was trained at), runs the
cascade, and returns the labels at the image's own size with the stage map and the per-stage
stop fractions, plus pictures: ``colorize()``, ``overlay()`` and ``stage_picture()``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STAGE_COLORS = np.array([[0, 0, 0], [46, 204, 113], [241, 196, 15], [231, 76, 60], [52, 152, 219],
                         [155, 89, 182]], dtype=np.uint8)  # stage 1 green, 2 yellow, 3 red, ...


def default_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map, for models without a palette of their own."""
    from .data.datasets import voc_palette

    return np.asarray(voc_palette(num_classes), dtype=np.uint8).reshape(num_classes, 3)


def load_image(image) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array as an (H, W, 3) uint8 RGB array."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB")).copy()
        except FileNotFoundError:
            raise FileNotFoundError(f"image: no such file {os.fspath(image)!r}") from None
        except OSError as e:
            raise ValueError(f"image: cannot read {os.fspath(image)!r} as an image ({e})") from e
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return image
    raise TypeError(f"image: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


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
        scale = edge / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
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
