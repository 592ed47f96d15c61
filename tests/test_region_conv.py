"""region_conv2d against the dense reference of DESIGN.md section 2, forward and backward, every backend."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecascade as sc
from sparsecascade.kernels import ConvGeometry, region_conv2d_forward_torch, triton_interpreting
from sparsecascade.ops import region_conv as region_conv_module

from _cases import conv_cases, dense_reference, make_mask, tolerance

TRITON_RUNS = triton_interpreting() or torch.cuda.is_available()
BACKENDS = ["torch", "auto"] + (["triton"] if TRITON_RUNS else [])
LOW_PRECISION = (torch.float16, torch.bfloat16)


def run(case, backend, **overrides):
    args = dict(x=case.x, weight=case.weight, bias=case.bias, residual=case.residual)
    args.update(overrides)
    kw = case.kwargs()
    kw["residual"] = args["residual"]
    return sc.region_conv2d(args["x"], args["weight"], args["bias"], case.mask, case.padding, case.dilation,
                            backend=backend, **kw)


def assert_matches_reference(out, case):
    ref = dense_reference(case)
    rtol, atol = tolerance(case.x.dtype)
    assert out.shape == ref.shape and out.dtype == case.x.dtype
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@given(case=conv_cases(dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)))
def test_forward_matches_dense(case, backend):
    assert_matches_reference(run(case, backend), case)


@pytest.mark.skipif(not TRITON_RUNS, reason="Triton needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=15)
@given(case=conv_cases(max_channels=18, max_size=7, max_batch=2,
                       dtypes=(torch.float32, torch.float16, torch.bfloat16)))
def test_forward_matches_dense_triton(case):
    assert_matches_reference(run(case, "triton"), case)


def _grads(case, backend):
    """Gradients of sum(out * g) w.r.t. x, weight, bias, residual through region_conv2d or the reference."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in
              dict(x=case.x, weight=case.weight, bias=case.bias, residual=case.residual).items() if v is not None}
    gen = torch.Generator().manual_seed(1)
    if backend == "reference":
        out = dense_reference(case, **leaves, dtype=case.x.dtype)
    else:
        out = run(case, backend, **leaves)
    g = torch.randn(out.shape, generator=gen).to(out.dtype)  # same values whatever the dtype
    torch.autograd.backward(out, g)
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20)
@given(data=st.data())
def test_backward_matches_dense(backend, data):
    small = backend == "triton"
    case = data.draw(conv_cases(max_channels=18 if small else 20, max_size=7 if small else 12,
                                max_batch=2 if small else 3, dtypes=(torch.float64,) if not small else (torch.float32,)))
    if small:  # compare the fp32 Triton gradients with fp64 reference gradients
        case64 = type(case)(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                               for k, v in vars(case).items()})
        got, want = _grads(case, backend), _grads(case64, "reference")
    else:
        got, want = _grads(case, backend), _grads(case, "reference")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] is not None, name
        rtol, atol = (1e-4, 1e-4) if small else (1e-9, 1e-9)
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=rtol, atol=atol, msg=name)


def _float64_case(seed: int):
    """(x, weight, bias, residual) leaves in float64, a BN scale and a clustered mask: gradcheck sizes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    r = torch.randn(2, 4, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    scale = torch.rand(4, dtype=torch.float64, generator=gen) + 0.5
    return (x, w, b, r), scale, make_mask("clustered", 2, 6, 7, gen)


def test_gradcheck_float64_torch_path():
    (x, w, b, r), scale, mask = _float64_case(3)
    for backend in ("torch", "auto"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, r: sc.region_conv2d(x, w, b, mask, padding=(1, 2), dilation=(1, 2), backend=backend,
                                                scale=scale, residual=r, res_scale=0.2, relu=True),
            (x, w, b, r),
        )
        assert torch.autograd.gradcheck(lambda x, w: sc.region_conv2d(x, w, None, mask, 1, backend=backend), (x, w))


def test_dense_fallback_matches_gather_path(monkeypatch):
    """"auto" on a CPU runs the dense conv above DENSE_FALLBACK_FRACTION: same values as the gather path."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(6, 8, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = torch.rand(2, 10, 10, generator=gen) < 0.95
    calls = []
    real_conv2d = F.conv2d
    monkeypatch.setattr(region_conv_module.F, "conv2d", lambda *a, **k: calls.append(1) or real_conv2d(*a, **k))
    dense = sc.region_conv2d(x, w, None, mask, 1, backend="auto", relu=True)
    assert calls, "the dense fallback was not taken"
    gx_dense, gw_dense = torch.autograd.grad(dense.sum(), (x, w))
    gather = sc.region_conv2d(x, w, None, mask, 1, backend="torch", relu=True)
    gx, gw = torch.autograd.grad(gather.sum(), (x, w))
    torch.testing.assert_close(dense, gather)
    torch.testing.assert_close(gx_dense, gx)
    torch.testing.assert_close(gw_dense, gw)


@given(case=conv_cases(max_batch=2))
def test_torch_twin_writes_exactly_the_active_rows(case):
    """Kernel contract: rows of ``out`` at idx are written (finite), every other row keeps its NaN poison."""
    x = case.x.permute(0, 2, 3, 1).contiguous()
    w = case.weight.permute(2, 3, 1, 0).contiguous()
    geometry = ConvGeometry(x.shape[1], x.shape[2], w.shape[0], w.shape[1], *case.padding, *case.dilation)
    out = torch.full((x.shape[0], geometry.out_height, geometry.out_width, w.shape[-1]), float("nan"), dtype=x.dtype)
    idx = case.mask.reshape(-1).nonzero().squeeze(1)
    region_conv2d_forward_torch(x, w, idx, out, geometry, bias=case.bias)
    rows = out.view(-1, w.shape[-1])
    active = case.mask.reshape(-1)
    assert torch.isfinite(rows[active]).all()
    assert torch.isnan(rows[~active]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate_inside_the_mask(backend):
    x = torch.randn(1, 4, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 4, 1] = float("inf")
    w = torch.randn(5, 4, 3, 3)
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    mask[0, :, 3:] = False
    out = sc.region_conv2d(x, w, None, mask, 1, backend=backend)
    ref = torch.where(mask[:, None], F.conv2d(x, w, padding=1), 0.0)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    assert torch.isnan(out[0, :, 1:4, 2]).all()  # the NaN's neighbourhood inside the mask (columns < 3)
    assert (out[0, :, :, 3:] == 0).all()  # outside the mask: zero, NaN or not


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_channels_last_and_input_untouched(backend):
    x = torch.randn(2, 3, 5, 5)
    x_copy = x.clone()
    r = torch.randn(2, 4, 5, 5)
    r_copy = r.clone()
    out = sc.region_conv2d(x, torch.randn(4, 3, 3, 3), None, torch.rand(2, 5, 5) < 0.5, 1, backend=backend, residual=r)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, x_copy) and torch.equal(r, r_copy)


def _ops_dispatched(fn) -> set:
    """The names of the ops that reach the dispatcher's Python mode while ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func))
            return func(*args, **(kwargs or {}))

    seen: set = set()
    with Record():
        fn()
    return seen


def test_eager_training_skips_the_ops_dispatch_and_the_registered_op_keeps_its_gradients(monkeypatch):
    """Eager training runs region_conv2d as an autograd.Function over the op's functions (the custom
    op's dispatch costs about what a small layer's kernels do); torch.compile traces the registered
    op, so its autograd formula must still give the dense gradients."""
    (x, w, b, r), scale, mask = _float64_case(5)

    def conv(x, w, b, r):
        return sc.region_conv2d(x, w, b, mask, padding=1, backend="torch", scale=scale, residual=r,
                                res_scale=0.5, relu=True)

    def step():
        conv(x, w, b, r).sum().backward()

    assert not any("sparsecascade" in name for name in _ops_dispatched(step))
    monkeypatch.setattr(region_conv_module._RegionConv2dFunction, "apply", region_conv_module._region_conv2d_op)
    assert "sparsecascade.region_conv2d.default" in _ops_dispatched(step)  # the op path, as compile meets it
    assert torch.autograd.gradcheck(conv, (x, w, b, r))


@pytest.mark.skipif(not TRITON_RUNS, reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_triton_backward_builds_the_input_index_once_per_geometry(monkeypatch):
    """Training on the Triton kernels: the backward's input-side index is built once per (active set,
    geometry) and shared by the layers of that geometry, and each layer gets its own geometry's
    index: the gradients equal those of the dense reference (every layer dense, then masked)."""
    from sparsecascade.kernels.region_conv import triton_backward
    from sparsecascade.nn import active_region, convert_to_region

    builds = []
    real = triton_backward.build_input_index

    def counting(idx, geometry, n_img, **kwargs):
        if not geometry.is_pointwise:  # a pointwise conv's index is (idx, None): nothing to build
            builds.append(geometry)
        return real(idx, geometry, n_img, **kwargs)

    monkeypatch.setattr(triton_backward, "build_input_index", counting)
    gen = torch.Generator().manual_seed(7)
    layers = [torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.Conv2d(6, 6, 3, padding=1),  # one geometry
              torch.nn.Conv2d(6, 6, 3, padding=2, dilation=2), torch.nn.Conv2d(6, 4, 1)]  # two others
    for layer in layers:
        for p in layer.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    model = convert_to_region(torch.nn.Sequential(*layers))
    x = torch.randn(2, 6, 9, 11, generator=gen)
    index = sc.ops.RegionIndex(make_mask("clustered", 2, 9, 11, gen))
    g = torch.randn(2, 4, 9, 11, generator=gen)

    def grads(backend):
        xr = x.clone().requires_grad_()
        with active_region(index, backend):
            out = model(xr)
        params = list(model.parameters())
        return torch.autograd.grad((out * g).sum(), [xr] + params)

    builds.clear()
    got = grads("triton")
    # the 3x3 geometry once for two layers, the dilated one once; the pointwise layer needs none
    assert sorted(builds, key=repr) == sorted({ConvGeometry(9, 11, 3, 3, 1, 1, 1, 1),
                                               ConvGeometry(9, 11, 3, 3, 2, 2, 2, 2)}, key=repr)
    for a, b in zip(got, grads("dense")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_form_is_input_plus_masked_conv(backend):
    """DESIGN.md's ``region_conv2d_residual(x, w, b, m) == x + conv2d(x, w, b) * m`` (x copied outside m),
    forward and the gradients of x (through both terms), w and b, against the dense expression."""
    gen = torch.Generator().manual_seed(7)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = torch.randn(2, 6, 9, 7, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(6, 6, 3, 3, generator=gen).to(dtype).requires_grad_()
    b = torch.randn(6, generator=gen).to(dtype).requires_grad_()
    m = torch.rand(2, 9, 7, generator=gen) < 0.4
    got = sc.region_conv2d_residual(x, w, b, m, padding=2, dilation=2, backend=backend)
    want = x + F.conv2d(x, w, b, padding=2, dilation=2) * m[:, None]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, want, **tol)
    g = torch.randn(want.shape, generator=gen).to(dtype)
    got_grads = torch.autograd.grad((got * g).sum(), (x, w, b))
    want_grads = torch.autograd.grad((want * g).sum(), (x, w, b))
    for name, a, e in zip("xwb", got_grads, want_grads):
        torch.testing.assert_close(a, e, **tol, msg=f"grad of {name}")
    with pytest.raises(ValueError, match=r"weight: expected C_out = C_in = 6 .*got shape \(4, 6, 3, 3\)"):
        sc.region_conv2d_residual(x, w[:4], b[:4], m, padding=2, dilation=2, backend=backend)
