"""Every region converter against the module it replaces (DESIGN.md section 2), in float64.

The reference is the *unconverted* original module's own forward, with the per-layer semantics
applied by forward hooks written here: the output of every convolution, BatchNorm and pooling is
zero outside the active set (resampled to the layer's output size: a coarse pixel is active if
any fine pixel it covers is). Everything else runs as the original wrote it, so a residual block
computes ``relu(x + 0)`` outside the region and a ReLU after a masked BatchNorm keeps the zeros.
Frozen BatchNorms get random statistics and affine parameters, so a dropped scale or shift shows,
and the reference computes them with ``F.batch_norm``, not with the library's ``scale_shift``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsecascade as sc
from sparsecascade.kernels import triton_interpreting
from sparsecascade.nn import FrozenBatchNorm2d
from sparsecascade.models.irnet import (BasicConv2d, Block8, Block17, Block35, Mixed_5b, Mixed_6a, Mixed_7a,
                                        build_irnet_stages)
from sparsecascade.models.resnet import BasicBlock, Bottleneck, build_resnet_stages
from sparsecascade.models.vgg import build_vgg16_largefov_stages
from sparsecascade.nn.convert import _CONVERTERS

from _cases import make_mask

TRITON_RUNS = triton_interpreting() or torch.cuda.is_available()
MASKED_BY_THE_SEMANTICS = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


def resample(mask: torch.Tensor, size) -> torch.Tensor:
    """The active set at a layer's output size: "any" over the fine pixels a coarse one covers."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    assert size[0] <= mask.shape[1] and size[1] <= mask.shape[2], "these blocks only downsample"
    return F.adaptive_max_pool2d(mask[:, None].double(), tuple(size))[:, 0] > 0


def masked_reference(original: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``original(x)`` with every conv / BatchNorm / pooling output zeroed outside ``mask``."""

    def zero_outside(module, inputs, output):
        if isinstance(module, FrozenBatchNorm2d):  # torch's own batch norm: independent of scale_shift()
            output = F.batch_norm(inputs[0], module.running_mean, module.running_var, module.weight, module.bias,
                                  training=False, eps=module.eps)
        m = resample(mask, output.shape[-2:])
        return torch.where(m[:, None], output, torch.zeros((), dtype=output.dtype))

    handles = [m.register_forward_hook(zero_outside) for m in original.modules()
               if isinstance(m, MASKED_BY_THE_SEMANTICS)]
    try:
        return original(x)
    finally:
        for h in handles:
            h.remove()


def randomize(module: nn.Module, seed: int, dtype=torch.float64) -> nn.Module:
    """Random weights, and frozen BatchNorms with random statistics and affine maps (far from identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=gen)
        elif isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    return module.to(dtype).eval()


def plain_sequential():
    """The generic path: Conv-BN-ReLU, Conv-ReLU and Conv-BN runs, a pooling, a dilated conv."""
    return nn.Sequential(
        nn.Conv2d(6, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, (1, 3), padding=(0, 1)), nn.ReLU(),
        nn.Conv2d(8, 10, 1), FrozenBatchNorm2d(10),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Conv2d(10, 7, 3, padding=2, dilation=2),
    )


def resnet_stage(block, k):
    stages, _ = build_resnet_stages(block, (1, 1, 1, 1))
    return stages[k]


# name -> (builder, input shape (N, C, H, W)); spatial sizes are odd so that strided layers round
BLOCKS = {
    "BasicBlock": (lambda: BasicBlock(8, 8), (2, 8, 7, 9)),
    "BasicBlock/downsample-stride2": (lambda: BasicBlock(8, 12, stride=2, downsample=nn.Sequential(
        nn.Conv2d(8, 12, 1, stride=2, bias=False), FrozenBatchNorm2d(12))), (2, 8, 9, 7)),
    "BasicBlock/downsample-dilated": (lambda: BasicBlock(8, 12, downsample=nn.Sequential(
        nn.Conv2d(8, 12, 1, bias=False), FrozenBatchNorm2d(12)), dilation=1, dilation2=2), (2, 8, 7, 9)),
    "Bottleneck": (lambda: Bottleneck(16, 4), (2, 16, 7, 9)),
    "Bottleneck/downsample-stride2": (lambda: Bottleneck(8, 4, stride=2, downsample=nn.Sequential(
        nn.Conv2d(8, 16, 1, stride=2, bias=False), FrozenBatchNorm2d(16))), (2, 8, 9, 7)),
    "Bottleneck/downsample-dilated": (lambda: Bottleneck(8, 4, downsample=nn.Sequential(
        nn.Conv2d(8, 16, 1, bias=False), FrozenBatchNorm2d(16)), dilation=2), (2, 8, 7, 9)),
    "BasicConv2d": (lambda: BasicConv2d(6, 9, kernel_size=3, padding=1), (2, 6, 7, 9)),
    "BasicConv2d/stride2": (lambda: BasicConv2d(6, 9, kernel_size=3, stride=2, padding=1), (2, 6, 9, 7)),
    "BasicConv2d/1x7-dilated": (lambda: BasicConv2d(6, 9, kernel_size=(1, 7), padding=(0, 6), dilation=(1, 2)),
                                (2, 6, 7, 9)),
    "Block35": (lambda: Block35(scale=0.17), (2, 320, 5, 6)),
    "Block17": (lambda: Block17(scale=0.10, dilation=2), (1, 1088, 5, 6)),
    "Block8": (lambda: Block8(scale=0.20, dilation=4), (1, 2080, 5, 6)),
    "Block8/no-relu": (lambda: Block8(scale=1.0, no_relu=True, dilation=4), (1, 2080, 5, 6)),
    "Mixed_5b": (lambda: Mixed_5b(), (2, 192, 5, 6)),
    "Mixed_6a": (lambda: Mixed_6a(stride=1), (1, 320, 5, 6)),
    "Mixed_6a/stride2": (lambda: Mixed_6a(stride=2), (1, 320, 7, 8)),
    "Mixed_7a": (lambda: Mixed_7a(stride=1, dilation=2), (1, 1088, 5, 6)),
    "Mixed_7a/stride2": (lambda: Mixed_7a(stride=2), (1, 1088, 7, 8)),
    "Sequential": (plain_sequential, (2, 6, 7, 9)),
    "vgg16/stage1": (lambda: build_vgg16_largefov_stages(fc_channels=32)[0][0], (1, 3, 19, 21)),
    "vgg16/stage3": (lambda: build_vgg16_largefov_stages(fc_channels=32)[0][2], (1, 512, 5, 6)),
    "resnet18/stage1": (lambda: resnet_stage(BasicBlock, 0), (1, 3, 29, 35)),
    "resnet50/stage2": (lambda: resnet_stage(Bottleneck, 1), (1, 512, 5, 6)),
    "irnet/stage1": (lambda: build_irnet_stages((1, 1, 1))[0][0], (1, 3, 17, 19)),
}


def masks_for(shape, seed: int):
    """Empty, full, and spatially coherent blobs at about 25% and 60% of the block's input."""
    n, _, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    return {"empty": make_mask("empty", n, h, w, gen), "full": make_mask("full", n, h, w, gen),
            "blobs25": make_mask("clustered", n, h, w, gen, p=0.25),
            "blobs60": make_mask("clustered", n, h, w, gen, p=0.6)}


def build(name: str, seed: int = 0, dtype=torch.float64):
    builder, shape = BLOCKS[name]
    torch.manual_seed(seed)
    original = randomize(builder(), seed, dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return original, x


def test_every_builtin_converter_is_covered():
    """A converter registered by the library without an entry in BLOCKS would go untested."""
    builtin = {t for t in _CONVERTERS if t.__module__.startswith("sparsecascade.")}
    covered = set()
    for builder, _ in BLOCKS.values():
        covered |= {type(m) for m in builder().modules()}
    assert builtin and builtin <= covered, builtin - covered


def check_equals_masked_original(name: str, backend: str) -> None:
    original, x = build(name)
    converted = sc.convert_to_region(copy.deepcopy(original))
    with torch.no_grad():
        assert any(isinstance(m, sc.RegionConv2d) for m in converted.modules())
        torch.testing.assert_close(converted(x), original(x), rtol=1e-10, atol=1e-10)  # outside a region: dense
        for kind, mask in masks_for(x.shape, seed=2).items():
            want = masked_reference(original, x, mask)
            with sc.active_region(mask, backend):
                got = converted(x)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{name}, {kind} mask, {backend}")


@pytest.mark.parametrize("name", list(BLOCKS))
def test_converted_module_equals_masked_original(name):
    check_equals_masked_original(name, "torch")


@pytest.mark.parametrize("backend", ["auto", "dense"])
@pytest.mark.parametrize("name", ["BasicBlock/downsample-stride2", "Bottleneck/downsample-dilated", "Block35",
                                  "Mixed_6a/stride2", "Sequential"])
def test_other_backends_equal_masked_original(name, backend):
    """"auto" (the dense fallback on a full CPU region) and "dense" (every layer dense, then masked)."""
    check_equals_masked_original(name, backend)


def test_the_reference_masks_something():
    """The hooks change the result on a partial mask (else the test above would compare dense with dense)."""
    original, x = build("Bottleneck")
    mask = masks_for(x.shape, seed=2)["blobs25"]
    assert 0 < mask.sum() < mask.numel()
    with torch.no_grad():
        assert not torch.allclose(masked_reference(original, x, mask), original(x))


@pytest.mark.parametrize("name", ["BasicBlock/downsample-stride2", "Bottleneck/downsample-dilated", "Block35",
                                  "Block8/no-relu", "BasicConv2d/1x7-dilated", "Sequential"])
def test_gradients_equal_masked_original(name):
    """Backward through the fused epilogues (residual, scale, ReLU) on the torch path, float64."""
    original, x = build(name)
    converted = sc.convert_to_region(copy.deepcopy(original))
    mask = masks_for(x.shape, seed=3)["blobs60"]
    x_ref, x_got = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = masked_reference(original, x_ref, mask)
    with sc.active_region(mask, "torch"):
        got = converted(x_got)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(4), dtype=want.dtype)
    (want * g).sum().backward()
    (got * g).sum().backward()
    torch.testing.assert_close(x_got.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    params = dict(original.named_parameters())
    for pname, p in converted.named_parameters():
        torch.testing.assert_close(p.grad, params[pname].grad, rtol=1e-9, atol=1e-9, msg=pname)


@pytest.mark.skipif(not TRITON_RUNS, reason="Triton needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", ["BasicBlock/downsample-dilated", "Bottleneck/downsample-stride2", "Sequential"])
def test_converted_module_equals_masked_original_triton(name):
    original, x = build(name, dtype=torch.float32)
    converted = sc.convert_to_region(copy.deepcopy(original))
    with torch.no_grad():
        for kind, mask in masks_for(x.shape, seed=2).items():
            want = masked_reference(original, x, mask)
            with sc.active_region(mask, "triton"):
                got = converted(x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"{name}, {kind} mask")
