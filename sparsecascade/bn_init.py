"""Data-dependent initialisation of frozen BatchNorm statistics, for training from scratch.

``LayerCascade`` freezes BatchNorm (DESIGN.md section 3): with ImageNet weights its statistics are
the pretrained ones. From scratch they are the identity (mean 0, variance 1), so nothing keeps the
activations at unit scale: a residual net's variance grows block by block and training crawls.
``init_batchnorm_from_data`` sets each frozen BatchNorm's ``running_mean`` / ``running_var`` to the
statistics its input has on a batch of training images, layer after layer in execution order (each
one sees the already-normalised layers before it), the data-dependent initialisation of Kraehenbuehl
et al. (2016) and LSUV (Mishkin and Matas, 2016). One dense forward pass; afterwards the statistics
stay frozen as usual, so the cascade's masked computation is unaffected.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .nn import FoldedBatchNorm, FrozenBatchNorm2d, RegionConv2d

__all__ = ["init_batchnorm_from_data"]


def _set_statistics(bn: nn.Module, y: torch.Tensor) -> None:
    """Make ``bn`` map ``y`` (N, C, H, W) to zero mean, unit variance per channel (times its affine)."""
    y = y.detach().float()
    bn.running_mean.copy_(y.mean(dim=(0, 2, 3)))
    bn.running_var.copy_(y.var(dim=(0, 2, 3), unbiased=False))


@torch.no_grad()
def init_batchnorm_from_data(model: nn.Module, images: torch.Tensor) -> int:
    """Set every frozen BatchNorm of ``model`` (a ``LayerCascade``) from ``images`` (N, 3, H, W),
    normalised as the model expects. Returns how many BatchNorms were set.

    Folded BatchNorms (applied in a ``RegionConv2d``'s epilogue) get the statistics of that conv's
    raw output; the others (``FrozenBatchNorm2d``) those of their input. The model runs densely
    (rho = 1) in eval mode and is returned to its former mode and rho.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected a batch (N, 3, H, W), got {getattr(images, 'shape', images)!r}")
    if images.shape[0] < 2:
        raise ValueError(f"images: expected at least 2 images to estimate statistics from, got {images.shape[0]}")
    done: set[int] = set()  # a module reused (called twice) is set on its first call only

    def conv_hook(conv: RegionConv2d, args):
        bn = conv.folded_bn[0]
        if id(bn) not in done:
            done.add(id(bn))
            _set_statistics(bn, conv._conv_forward(args[0], conv.weight, conv.bias))

    def bn_hook(bn: nn.Module, args):
        if id(bn) not in done:
            done.add(id(bn))
            _set_statistics(bn, args[0])

    handles = []
    for module in model.modules():
        if isinstance(module, RegionConv2d) and module.folded_bn:
            handles.append(module.register_forward_pre_hook(conv_hook))
        elif isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)) and not isinstance(module, FoldedBatchNorm):
            handles.append(module.register_forward_pre_hook(bn_hook))
    was_training, rho = model.training, model.rho
    device = next(model.parameters()).device
    try:
        model.eval()
        model.rho = 1.0
        model(images.to(device))
    finally:
        for h in handles:
            h.remove()
        model.rho = rho
        model.train(was_training)
    if not done:
        warnings.warn("bn_init_images: the model has no BatchNorm (e.g. VGG-16): nothing was initialised; "
                      "set bn_init_images to 0", stacklevel=2)
    return len(done)
