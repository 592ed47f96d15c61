"""Deprecated location: the region converters of the built-in blocks live beside the blocks
(``sparsecascade.models.resnet``, ``sparsecascade.models.irnet``) and are registered when those
modules are imported. Importing this module imports them, as it did before."""
from .models.irnet import RegionBasicConv2d, RegionBlock8, RegionBlock17, RegionBlock35  # noqa: F401
from .models.resnet import RegionBasicBlock, RegionBottleneck  # noqa: F401
