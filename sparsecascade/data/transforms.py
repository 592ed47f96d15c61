"""Joint image + label transforms: random scale, crop with ignore-label padding, flip, normalisation.

A transform is called as ``t(image, label, rng)`` on a uint8 RGB array (H, W, 3) and a uint8
train-id map (H, W); ``rng`` is the ``numpy.random.Generator`` the data set seeds per sample
(``[seed, epoch, index]``), the only source of randomness, so augmentations are reproducible.
``Normalize`` ends a pipeline: it returns a float tensor (3, H, W) and an int64 tensor (H, W).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .classes import IGNORE_INDEX

Size = Union[int, Sequence[int]]


def _pair(size: Size, name: str) -> tuple[int, int]:
    """(height, width) from an int or a pair of positive ints."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def _resize(image: np.ndarray, label: Optional[np.ndarray], hw: tuple[int, int]):
    """Bilinear for the image, nearest for the label (train ids must not be blended)."""
    h, w = hw
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return image, label


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, label, rng: np.random.Generator):
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"scale range: expected 0 < min_scale <= max_scale, got ({min_scale}, {max_scale})")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def __call__(self, image, label, rng):
        s = rng.uniform(self.min_scale, self.max_scale)
        h, w = label.shape
        return _resize(image, label, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """A random ``size`` window; smaller inputs are first padded at the bottom and right, the image
    with ``fill`` (the mean colour, so it normalises to 0) and the label with ``ignore_index``."""

    def __init__(self, size: Size, fill: Sequence[int] = (0, 0, 0), ignore_index: int = IGNORE_INDEX):
        self.size = _pair(size, "crop_size")
        self.fill = np.asarray(fill, dtype=np.uint8)
        self.ignore_index = ignore_index

    def __call__(self, image, label, rng):
        ch, cw = self.size
        h, w = label.shape
        if h < ch or w < cw:
            ph, pw = max(ch, h), max(cw, w)
            padded = np.empty((ph, pw, 3), dtype=np.uint8)
            padded[:] = self.fill
            padded[:h, :w] = image
            padded_label = np.full((ph, pw), self.ignore_index, dtype=np.uint8)
            padded_label[:h, :w] = label
            image, label, h, w = padded, padded_label, ph, pw
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[top: top + ch, left: left + cw], label[top: top + ch, left: left + cw]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image, label, rng):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class Resize:
    """Resize the image to ``size`` ((height, width), or an int: the shorter side). The label keeps its
    resolution unless ``resize_label``: evaluation then compares predictions upsampled to the label."""

    def __init__(self, size: Size, resize_label: bool = False):
        self.size = size if isinstance(size, int) else _pair(size, "size")
        if isinstance(size, int) and size <= 0:
            raise ValueError(f"size: expected a positive int or (height, width), got {size!r}")
        self.resize_label = resize_label

    def __call__(self, image, label, rng):
        h, w = image.shape[:2]
        if isinstance(self.size, int):
            s = self.size / min(h, w)
            hw = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            hw = self.size
        image, resized = _resize(image, label if self.resize_label else None, hw)
        return image, resized if self.resize_label else label

    def __repr__(self) -> str:
        return f"Resize({self.size}, resize_label={self.resize_label})"


class Normalize:
    """uint8 arrays -> ``((image / 255 - mean) / std)`` float32 (3, H, W) and int64 labels (H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean, std: expected 3 values each (std > 0), got {mean!r}, {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, label, rng):
        # copies: PIL-backed arrays are read-only, and a flipped view has negative strides
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        x = (x - self.mean) / self.std
        return x, torch.from_numpy(np.array(label, dtype=np.int64))

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transform(crop_size: Size, mean: Sequence[float], std: Sequence[float], *,
                    scale_range: Sequence[float] = (0.5, 2.0), flip: bool = True,
                    ignore_index: int = IGNORE_INDEX) -> Compose:
    """DeepLab-style training augmentation: random scale, random crop (padded), flip, normalise."""
    fill = tuple(int(round(255 * m)) for m in mean)
    steps = [RandomScale(*scale_range), RandomCrop(crop_size, fill, ignore_index)]
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps + [Normalize(mean, std)])


def eval_transform(mean: Sequence[float], std: Sequence[float], size: Optional[Size] = None) -> Compose:
    """Normalise, after an optional resize of the image (the label stays at full resolution)."""
    return Compose(([Resize(size)] if size is not None else []) + [Normalize(mean, std)])
