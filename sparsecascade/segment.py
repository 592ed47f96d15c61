"""``model.segment(image)`` or ``segment(model, [images])``: images in (paths, PIL images or (H, W, 3)
uint8 arrays), labels out.

Reads each image upright (EXIF orientation) as 8-bit RGB whatever its mode (16-bit and float grey
scaled, palette, CMYK, alpha dropped: ``sparsecascade.data.images``), applies the model's
preprocessing (``Preprocess``, built from ``model.pretrained_cfg``: its normalization and, when it
has ``shortest_edge``, a resize so that the image's shorter side has that many pixels, the scale the
model was trained at, with the longer side capped at ``longest_edge``, by default
``LONGEST_EDGE_RATIO`` times the shorter: a 1 x 400 strip is not blown up to 180 x 72000), runs the
cascade, and returns the labels at the image's own size with the stage map and the per-stage stop
fractions, plus pictures: ``colorize()``, ``overlay()``, ``stage_picture()`` and ``label_image()``
(a palette PNG that keeps the class ids). A list of images runs in batches of images of one size.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .rho import check_rho

LONGEST_EDGE_RATIO = 4  # default cap of the longer side, in units of the shorter one (config "longest_edge")
DEFAULT_BATCH_SIZE = 8  # images of one size that segment() runs through the model together
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


# -- preprocessing: from the model's pretrained_cfg --------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """Images -> the model's input batch: 8-bit RGB scaled to [0, 1], normalized with ``mean`` / ``std``,
    resized (bilinear, antialiased when shrinking) to the training scale ``shortest_edge`` (None: the
    image's own size), channels-last. Build it from a model (``Preprocess.of(model)``) or from its
    ``pretrained_cfg`` (``Preprocess.from_config(cfg)``); calling it on one image or a list of images of
    one size gives the (N, 3, h, w) float batch that ``model(x)`` takes."""

    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    shortest_edge: Optional[int] = None
    longest_edge: Optional[int] = None

    @classmethod
    def from_config(cls, cfg: Mapping) -> "Preprocess":
        """From a ``pretrained_cfg`` (or a ``config.json``): its mean, std, shortest_edge and longest_edge."""
        mean, std = cfg.get("mean"), cfg.get("std")
        return cls(tuple(float(v) for v in mean) if mean is not None else cls.mean,
                   tuple(float(v) for v in std) if std is not None else cls.std,
                   cfg.get("shortest_edge") or None, cfg.get("longest_edge") or None)

    @classmethod
    def of(cls, model) -> "Preprocess":
        """The preprocessing of ``model``: its ``pretrained_cfg``; for a model built without one (a
        ``LayerCascade`` made by hand), its ``config`` and ``mean`` / ``std`` attributes, else none."""
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is None:
            cfg = dict(getattr(model, "config", None) or {})
            for key in ("mean", "std"):
                if cfg.get(key) is None and getattr(model, key, None) is not None:
                    cfg[key] = getattr(model, key)
        return cls.from_config(cfg)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the model sees an image of ``height`` x ``width`` at."""
        if not self.shortest_edge:
            return height, width
        return inference_size(height, width, self.shortest_edge, self.longest_edge)

    def __call__(self, images, device=None) -> torch.Tensor:
        """One image or a list of images of one size (paths, PIL images, arrays) -> (N, 3, h, w) float32."""
        rgbs = [load_image(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        return self.batch(rgbs, device)

    def batch(self, rgbs: Sequence[np.ndarray], device=None) -> torch.Tensor:
        """(H, W, 3) uint8 RGB arrays of one size -> the normalized, resized (N, 3, h, w) batch."""
        if not rgbs:
            raise ValueError("images: expected at least one image, got none")
        sizes = sorted({rgb.shape[:2] for rgb in rgbs})
        if len(sizes) > 1:
            raise ValueError(f"images: a batch holds images of one size, got {sizes}; segment() takes a list of "
                             f"mixed sizes and batches each size apart")
        h, w = sizes[0]
        x = torch.from_numpy(np.stack(rgbs)).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        size = self.input_size(h, w)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h)
        return x.contiguous(memory_format=torch.channels_last)


def preprocess(model, images, device=None) -> torch.Tensor:
    """``Preprocess.of(model)(images)`` on the model's device: the batch ``model(x)`` takes."""
    if device is None:
        device = next(model.parameters()).device
    return Preprocess.of(model)(images, device)


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class Segmentation:
    image: np.ndarray  # (H, W, 3) uint8, the input
    labels: np.ndarray  # (H, W) int64 class ids
    stage_map: np.ndarray  # (H, W) uint8: the stage (1-based) that decided each pixel
    stop_fractions: list  # share of this image's pixels decided at each stage
    palette: np.ndarray  # (num_classes, 3) uint8
    class_names: list
    ms: float  # time of the model's forward pass (per image, when a batch ran together)

    def colorize(self):
        """The label map in the model's palette, as an RGB PIL image."""
        from PIL import Image

        return Image.fromarray(self.palette[self.labels])

    def label_image(self):
        """The label map as a palette ("P" mode) PIL image: its pixel values are the class ids, shown
        in the model's colours; saved as PNG, the file reads back as the labels themselves. More than
        256 classes: a 16-bit grey image of the class ids (no colours)."""
        from PIL import Image

        if len(self.palette) > 256:
            return Image.fromarray(self.labels.astype(np.uint16))
        h, w = self.labels.shape
        image = Image.frombytes("P", (w, h), np.ascontiguousarray(self.labels, dtype=np.uint8).tobytes())
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(self.palette)] = self.palette
        image.putpalette(colours.reshape(-1).tolist())
        return image

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


# -- segment ---------------------------------------------------------------------------------------------
def segment(model, image, rho=None, *, batch_size: int = DEFAULT_BATCH_SIZE):
    """Segment one image (-> a ``Segmentation``) or a list of images (-> a list, in order) with an LC model.

    A list is read first (a bad image raises before anything runs), then images of one size run
    through the model together, ``batch_size`` at a time; each result is the image's own (its stop
    fractions are its pixels' shares; ``ms`` is the batch's forward time per image). ``rho``
    overrides the model's threshold for this call (a number, or one per stage but the last). See the
    module docstring.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if rho is not None:
        check_rho(rho, getattr(model, "num_stages", None))
    single = not isinstance(image, (list, tuple))
    rgbs = [load_image(im) for im in ([image] if single else image)]
    results: list = [None] * len(rgbs)
    by_size: dict = {}
    for i, rgb in enumerate(rgbs):
        by_size.setdefault(rgb.shape[:2], []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            for i, result in zip(chunk, segment_batch(model, [rgbs[i] for i in chunk], rho)):
                results[i] = result
    return results[0] if single else results


def segment_batch(model, rgbs: Sequence[np.ndarray], rho=None) -> list[Segmentation]:
    """(H, W, 3) uint8 RGB arrays of one size through the model as one batch -> one ``Segmentation`` each."""
    device = next(model.parameters()).device
    x = Preprocess.of(model).batch(rgbs, device)
    h, w = rgbs[0].shape[:2]
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
            ms = (time.perf_counter() - start) * 1e3 / len(rgbs)
    finally:
        model.rho = old_rho
        model.train(was_training)
    labels = out.labels
    if tuple(labels.shape[-2:]) != (h, w):  # the probabilities, not the labels, are resized: smooth boundaries
        labels = F.interpolate(out.probs, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    stage_maps = F.interpolate(out.stage_map[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    num_classes = out.logits.shape[1]
    config = getattr(model, "config", None) or {}
    palette = np.asarray(config.get("palette") or default_palette(num_classes), dtype=np.uint8)
    names = list(config.get("class_names") or [f"class {i}" for i in range(num_classes)])
    results = []
    for i, rgb in enumerate(rgbs):
        # the image's own shares, at stage 1's resolution as the cascade counts them
        counts = torch.bincount(out.stage_map[i].reshape(-1), minlength=model.num_stages + 1)[1:]
        fractions = (counts.double() / out.stage_map[i].numel()).tolist()
        results.append(Segmentation(rgb, labels[i].cpu().numpy(), stage_maps[i].to(torch.uint8).cpu().numpy(),
                                    fractions, palette, names, ms))
    return results
