"""Moved: :class:`FrozenBatchNorm2d` and :func:`freeze_batchnorm` live in :mod:`sparsecascade.frozen_bn`
(below the backbones, so that the cascade wrapper needs no backbone family). Re-exported here."""
from ..frozen_bn import FrozenBatchNorm2d, freeze_batchnorm

__all__ = ["FrozenBatchNorm2d", "freeze_batchnorm"]
