"""Export an LC model's dense path (rho = 1) as a static graph: a ``torch.export`` program or ONNX.

    program = export_dense(model, torch.randn(2, 3, 360, 480), "lc.pt2")             # torch.export.save
    export_dense(model, torch.randn(2, 3, 360, 480), "lc.onnx", format="onnx")       # needs onnx, onnxscript
    sparsecascade export --model lc-vgg16-camvid --out export_out                     # both, + the preprocessing

**Why the cascade itself is not exported.** A static graph (``torch.export``, ONNX, TensorRT) fixes
its operations and, up to symbolic sizes of the input, the shapes of every tensor before it sees an
image. The cascade decides per image which pixels go on to the next stage: the active set of a stage
is the pixels whose confidence is below ``rho``, so the number of pixels a region convolution gathers
(the rows of its GEMM) depends on the pixel values, and a stage that no pixel reaches is skipped, a
branch on data. Those sizes and branches are what saves the work, and they cannot be fixed ahead of
time; tracing the cascade either fails on them or bakes in one image's active sets.

**What a deployment does instead.** Where the savings matter, run the cascade itself with this
package (eager PyTorch; on a GPU the region convolutions are Triton kernels). Where a runtime needs a
static graph (ONNX Runtime, TensorRT, AOTInductor, a phone), export the dense path written here: every
stage and the last stage's head on every pixel, which is what ``LayerCascade`` computes at rho = 1
(the deeply supervised network), so it gives the same logits as ``model.eval()`` with ``model.rho = 1``
at the dense network's full cost. The region-converted modules compute densely when they are called
outside ``active_region``, so the export traces plain convolutions.

The exported program takes the normalized (N, 3, H, W) float batch (``sparsecascade.segment.preprocess``
makes it; ``model.pretrained_cfg`` holds the mean, std and training scale) and returns the (N, C, H, W)
class logits at the input's size; the labels are their argmax over C. With ``dynamic=True`` (the
default) the batch size, height and width stay symbolic where the network allows it (an example batch
of one image fixes the batch size at 1).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMATS = ("torch", "onnx")
SUFFIXES = {"torch": ".pt2", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export(dynamo=True) needs
ONNX_OPSET = 18


class DenseLogits(nn.Module):
    """The dense path of a ``LayerCascade``: its stages in turn, the last head, and the logits resized
    as ``LayerCascade`` resizes them (to stage 1's resolution, then bilinearly to the input). Shares
    the model's modules (no copy); equal to ``model.eval()`` logits at ``rho = 1``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        stages, heads = getattr(model, "stages", None), getattr(model, "heads", None)
        if not isinstance(stages, nn.ModuleList) or not isinstance(heads, nn.ModuleList) or len(stages) != len(heads):
            raise TypeError(f"model: expected a LayerCascade (stages and one head per stage), got {type(model).__name__}")
        self.stages = stages
        self.head = heads[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        first_size = None
        for stage in self.stages:
            features = stage(features)
            if first_size is None:
                first_size = features.shape[-2:]
        logits = self.head(features)
        if logits.shape[-2:] != first_size:  # LayerCascade assembles the decisions at stage 1's resolution
            logits = F.interpolate(logits, size=first_size, mode="bilinear", align_corners=False)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def onnx_available() -> bool:
    """Whether ``torch.onnx.export`` can write ONNX here (the ``onnx`` and ``onnxscript`` packages)."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)


def _dynamic_shapes():
    """Batch, height and width symbolic where the network allows (``Dim.AUTO``); None on a torch without it."""
    from torch.export import Dim

    auto = getattr(Dim, "AUTO", None)
    return None if auto is None else {"x": {0: auto, 2: auto, 3: auto}}


def export_dense(model: nn.Module, example_input: torch.Tensor, path: Union[str, os.PathLike], format: str = "torch",
                 *, dynamic: bool = True):
    """Write the dense path (rho = 1) of ``model`` to ``path``: an ``ExportedProgram`` (``format="torch"``,
    ``torch.export.save``; load it with ``torch.export.load(path).module()``) or an ONNX file
    (``format="onnx"``, opset 18; needs ``onnx`` and ``onnxscript``). ``example_input``: a normalized
    (N, 3, H, W) float batch of the size to expect. Returns the ``ExportedProgram`` (torch) or the
    ``torch.onnx.ONNXProgram`` (onnx). See the module docstring for why the cascade path is not exported.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4 or example_input.shape[1] != 3 \
            or not example_input.is_floating_point():
        got = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"example_input: expected a normalized (N, 3, H, W) float image batch, got {got}")
    if not isinstance(dynamic, bool):
        raise ValueError(f"dynamic: expected True or False, got {dynamic!r}")
    if format == "onnx" and not onnx_available():
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        raise RuntimeError(f"format: 'onnx' needs the packages {missing} (pip install 'sparsecascade[export]')")
    path = Path(path)
    dense = DenseLogits(model).eval()
    was_training = model.training
    model.eval()
    try:
        shapes = _dynamic_shapes() if dynamic else None
        with torch.no_grad():
            if format == "torch":
                program = torch.export.export(dense, (example_input,), dynamic_shapes=shapes)
                path.parent.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():  # channels-last weights read to torch.export as partial
                    warnings.filterwarnings("ignore", message="No complete tensor found")  # views: they are whole
                    torch.export.save(program, path)
                return program
            path.parent.mkdir(parents=True, exist_ok=True)
            with _quiet_onnx_logs():
                return torch.onnx.export(dense, (example_input,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=["image"], output_names=["logits"], dynamic_shapes=shapes,
                                         verbose=False)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_onnx_logs():
    """The ONNX exporter logs a line per torchvision op it skips and warns about its own deprecations:
    none of them concern an LC model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
