"""Reading any image a user hands in as 8-bit RGB, or refusing it in one line.

Every Pillow mode becomes an (H, W, 3) uint8 array:

- 8-bit modes (L, P, RGB, RGBA, LA, CMYK, YCbCr, ...): Pillow's conversion; an alpha channel is
  dropped (the stored colours are kept), a palette with transparency goes through RGBA first;
- 16-bit grey (``I;16*``): the full 0..65535 range scaled to 0..255;
- 32-bit integer and float grey (``I``, ``F``): floats in [0, 1] are scaled by 255, values in
  [0, 255] kept, values in [0, 65535] scaled as 16-bit, anything else stretched from its minimum to
  its maximum; NaN or infinite values are an error.

``read_image`` applies the EXIF orientation (``ImageOps.exif_transpose``): a phone photo tagged as
rotated is read upright, as viewers show it.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

Where = Union[str, os.PathLike]
ALPHA_MODES = {"La": "LA", "RGBa": "RGBA", "PA": "RGBA"}  # converted first: Pillow has no direct path to RGB


def read_image(path: Where, exif: bool = True) -> np.ndarray:
    """The image file at ``path`` as (H, W, 3) uint8 RGB, upright per its EXIF tag when ``exif``."""
    try:
        with Image.open(path) as im:
            return to_rgb(ImageOps.exif_transpose(im) if exif else im, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image: no such file {os.fspath(path)!r}") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image: {os.fspath(path)!r} is too large to read safely ({e})") from None
    except OSError as e:
        raise ValueError(f"image: cannot read {os.fspath(path)!r} as an image ({e})") from e


def to_rgb(im: Image.Image, where: Where = "image") -> np.ndarray:
    """A PIL image in any mode as (H, W, 3) uint8 RGB (see the module docstring)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = grey_to_uint8(np.asarray(im), sixteen_bit=im.mode.startswith("I;16"), where=where)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ALPHA_MODES:
        im = im.convert(ALPHA_MODES[im.mode])
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"))


def grey_to_uint8(values: np.ndarray, sixteen_bit: bool = False, where: Where = "image") -> np.ndarray:
    """One grey channel of any depth on the 8-bit scale (see the module docstring for the rule)."""
    v = values.astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{os.fspath(where)}: the image holds NaN or infinite pixel values")
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if sixteen_bit:
        v = v * (255 / 65535)
    elif values.dtype.kind == "f" and lo >= 0 and hi <= 1:
        v = v * 255
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        v = v * (255 / 65535)
    else:
        v = (v - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(v)  # stretched: min -> 0, max -> 255
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


def array_to_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped) as (H, W, 3) RGB."""
    shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if image.dtype != np.uint8 or not shape_ok:
        hint = ""
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
            hint = " (channels first? use image.transpose(1, 2, 0))"
        elif image.dtype.kind == "f":
            hint = " (floats in [0, 1]: (image * 255).round().astype(np.uint8))"
        raise ValueError(f"image: expected an (H, W, 3) uint8 array (or (H, W), (H, W, 4)), got "
                         f"{image.dtype} {image.shape}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected at least one pixel, got an empty array of shape {image.shape}")
    if image.ndim == 2:
        image = image[:, :, None]
    return np.ascontiguousarray(np.broadcast_to(image[:, :, :3], (*image.shape[:2], 3)) if image.shape[2] == 1
                                else image[:, :, :3])
