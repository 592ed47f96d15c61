"""The Triton backward is deterministic: no atomics, a fixed reduction order, the same bits twice.

Under TRITON_INTERPRET=1 (conftest.py) the kernels run as numpy code, where any summation order
is reproducible: these tests check the structure that makes the GPU run reproducible too (no
atomic in any region-conv kernel, the grad-input gather through the input-side index, the
split grad-weight reduction summed by torch in a fixed order, fixed tiles in deterministic mode)
and that ``torch.use_deterministic_algorithms(True)`` accepts every op of the path. On a CUDA
machine without TRITON_INTERPRET the same tests compare two real GPU runs bit for bit
(benchmarks/gpu/validate.sh runs them there).
"""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from sparsecascade.kernels import TRITON_AVAILABLE, ConvGeometry, region_conv2d_backward_torch, triton_interpreting

if not TRITON_AVAILABLE or not (triton_interpreting() or torch.cuda.is_available()):
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from sparsecascade.kernels.region_conv import triton_backward, triton_common, triton_forward  # noqa: E402
from sparsecascade.kernels.region_conv.triton_backward import (  # noqa: E402
    build_input_index,
    grad_weight_split,
    region_conv2d_backward_triton,
)

DEVICE = torch.device("cpu" if triton_interpreting() else "cuda")


@pytest.fixture
def deterministic_mode():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _problem(geometry: ConvGeometry, n_img: int, c_in: int, c_out: int, dtype, density: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_img, geometry.height, geometry.width, c_in, generator=gen).to(dtype)
    weight = (torch.randn(geometry.kernel_h, geometry.kernel_w, c_in, c_out, generator=gen) / 8).to(dtype)
    mask = torch.rand(n_img * geometry.out_height * geometry.out_width, generator=gen) < density
    idx = mask.nonzero().squeeze(1)
    grad_rows = torch.randn(idx.numel(), c_out, generator=gen)
    return x.to(DEVICE), weight.to(DEVICE), idx.to(DEVICE), grad_rows.to(DEVICE)


def test_no_atomics_in_region_conv_kernels():
    """Every region-conv kernel writes each output element from one program (the grad-input is a
    gather, the grad-weight partials are summed by torch): no atomic operation in any of them."""
    # @triton.jit objects (JITFunction, or the interpreter's wrapper) hold the Python function in .fn
    sources = {obj.fn.__name__: inspect.getsource(obj.fn)
               for module in (triton_forward, triton_backward, triton_common) for obj in vars(module).values()
               if inspect.isfunction(getattr(obj, "fn", None))}
    assert {"region_conv2d_fwd_kernel", "region_conv2d_bwd_input_kernel", "region_conv2d_bwd_weight_kernel",
            "region_conv2d_input_map_kernel", "tap_output_rows"} <= set(sources)
    for name, source in sources.items():
        assert "atomic" not in source, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel, pad, dil", [((3, 3), 1, 1), ((3, 3), 2, 2), ((1, 1), 0, 1), ((1, 3), 1, 1)])
def test_backward_twice_same_bits(deterministic_mode, kernel, pad, dil, dtype):
    """Two backward runs under torch.use_deterministic_algorithms(True): identical bits, and the
    values of the torch twin (computed from the same grad rows rounded to the input dtype)."""
    g = ConvGeometry(9, 8, *kernel, pad, pad, dil, dil)
    x, weight, idx, grad_rows = _problem(g, 2, 17, 33, dtype, 0.7, seed=3)
    first = region_conv2d_backward_triton(grad_rows, x, weight, idx, g, allow_tf32=False)
    second = region_conv2d_backward_triton(grad_rows, x, weight, idx, g, allow_tf32=False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    twin = region_conv2d_backward_torch(grad_rows.to(dtype).float(), x, weight, idx, g)
    for a, b in zip(first, twin):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_grad_weight_split_reduction(deterministic_mode):
    """Many rows and few weight tiles: the P reduction is split into fixed chunks whose fp32
    partials torch sums in a fixed order; the result still equals the twin's."""
    size = 12 if triton_interpreting() else 64  # a GPU splits only chunks of >= 512 rows
    g = ConvGeometry(size, size - 1, 1, 3, 0, 1)
    x, weight, idx, grad_rows = _problem(g, 2, 5, 3, torch.float32, 0.9, seed=4)
    split, rows = grad_weight_split(idx.numel(), g, 5, 3, x.device)
    assert split > 1 and rows % triton_backward.SPLIT_ROW_QUANTUM == 0 and split * rows >= idx.numel()
    _, gw = region_conv2d_backward_triton(grad_rows, x, weight, idx, g, need_input=False, allow_tf32=False)
    _, tw = region_conv2d_backward_torch(grad_rows, x, weight, idx, g, need_input=False)
    torch.testing.assert_close(gw, tw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, pad, dil", [((3, 3), 1, 1), ((3, 3), 0, 2), ((1, 7), 0, 1), ((5, 5), 1, 1)])
def test_input_side_index(kernel, pad, dil):
    """build_input_index: the touched input rows, sorted and padded with -1 to the static bound,
    and the output pixel -> grad row map, against a brute-force count from the tap table."""
    g = ConvGeometry(8, 9, *kernel, pad, pad, dil, dil)
    _, _, idx, _ = _problem(g, 2, 1, 1, torch.float32, 0.3, seed=5)
    rows, pos = build_input_index(idx, g, 2)
    n_in = 2 * g.height * g.width
    assert rows.numel() == min(n_in, idx.numel() * g.taps)
    tap_rows, valid = g.tap_rows(idx)
    expected = torch.unique(tap_rows[valid])
    found = rows[rows >= 0]
    assert torch.equal(found, expected)
    assert (rows[found.numel():] == -1).all()
    want_pos = torch.full((2 * g.out_height * g.out_width,), -1, dtype=torch.int32, device=DEVICE)
    want_pos[idx] = torch.arange(idx.numel(), dtype=torch.int32, device=DEVICE)
    assert torch.equal(pos, want_pos)


def test_op_backward_deterministic(deterministic_mode):
    """Through the op: two backward passes of region_conv2d(backend="triton") give the same bits."""
    from sparsecascade.ops import region_conv2d

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 7, 9, generator=gen).to(DEVICE)
    w = torch.randn(16, 16, 3, 3, generator=gen).to(DEVICE)
    mask = (torch.rand(1, 7, 9, generator=gen) < 0.5).to(DEVICE)
    grads = []
    for _ in range(2):
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        region_conv2d(xi, wi, None, mask, padding=1, backend="triton").square().sum().backward()
        grads.append((xi.grad, wi.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    ref = F.conv2d(x.double(), w.double(), padding=1) * mask[:, None]
    assert ref.isfinite().all()


def test_fixed_config_is_a_function_of_the_shapes():
    """In deterministic mode the tiles come from a rule, not from timing: largest tiles that
    still give every SM a program, else the config with the most programs."""
    configs = triton_common.make_configs([(128, 128, 64, 8, 3), (64, 64, 64, 4, 3), (32, 32, 32, 4, 3)],
                                         ("BLOCK_P", "BLOCK_CO", "BLOCK_CI"))
    device = torch.device("cpu")  # num_sms: 4 off a GPU

    def ctas(p, c_out):
        return lambda c: -(-p // c.kwargs["BLOCK_P"]) * -(-c_out // c.kwargs["BLOCK_CO"])

    assert triton_common.fixed_config(configs, ctas(1024, 256), device).kwargs["BLOCK_P"] == 128
    assert triton_common.fixed_config(configs, ctas(200, 64), device).kwargs["BLOCK_P"] == 64
    assert triton_common.fixed_config(configs, ctas(20, 16), device).kwargs["BLOCK_P"] == 32
