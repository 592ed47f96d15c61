"""The kernels registered as torch.library ops (``sparsecascade.ops.library.triton_ops()``).

``torch.library.triton_op`` with ``wrap_triton`` around every launch, the torch twins as the CPU
kernels, fake implementations, an autograd formula for the forward. Checked here:

* the ops' Triton path equals their CPU kernels (the twins), forward and backward, on aligned
  channel counts (multiples of 16: the full-tile path) and odd ones, in fp32;
* ``torch.library.opcheck`` (schema, fake implementation, autograd registration, AOT dispatch
  with dynamic shapes) on the CPU kernels and, for the forward, on the interpreted Triton path;
* ``torch.compile`` (backend "aot_eager" on CPU) traces them without graph breaks, each op one
  node that runs its CPU kernel;
* on a GPU the compiler traces into the launches: without a GPU, a subprocess (no interpreter)
  traces the ops with fake CUDA tensors and checks the graph AOTAutograd hands to inductor.

Interpreter limits (TRITON_INTERPRET=1, set by conftest.py): the Triton kernels run as numpy code
on CPU tensors, so nothing is compiled, low-precision dots are upcast (fp32 only here; the dtype
matrix is in test_triton_kernels.py) and the TF32 switch changes nothing (it is switched off here
so that every comparison is exact fp32). ``wrap_triton`` returns an interpreted kernel unchanged
(torch 2.13: it is no ``@triton.jit`` function it can record), so under the interpreter
torch.compile cannot trace into a launch: the ops stay opaque on a CPU by design.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sparsecascade.kernels import TRITON_AVAILABLE, ConvGeometry, triton_interpreting

if not TRITON_AVAILABLE or not (triton_interpreting() or torch.cuda.is_available()):
    pytest.skip("Triton ops need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from sparsecascade.ops.library import triton_on_cpu, triton_ops  # noqa: E402

DEVICE = torch.device("cpu" if triton_interpreting() else "cuda")
OPS = triton_ops()


def _triton():
    """The ops' Triton path: the interpreter on a CPU, the compiled kernels on a GPU."""
    return triton_on_cpu() if DEVICE.type == "cpu" else contextlib.nullcontext()


@pytest.fixture(autouse=True)
def _exact_fp32():
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = before


# (C_in, C_out, (KH, KW), padding, dilation): aligned channels (the EVEN_* full-tile path) and odd ones
CASES = [
    (16, 32, (3, 3), (1, 1), (1, 1)),
    (64, 16, (3, 3), (2, 2), (2, 2)),
    (5, 17, (3, 3), (1, 1), (1, 1)),
    (33, 5, (1, 3), (0, 1), (1, 1)),
    (17, 16, (1, 1), (0, 0), (1, 1)),  # pointwise: no tap table, rows map one-to-one
]


def _problem(c_in, c_out, kernel, padding, dilation, *, seed, relu, device=DEVICE):
    """Leaf tensors of one problem: NHWC x, a (C_out, C_in, KH, KW) weight (the op gets its permuted,
    strided (KH, KW, C_in, C_out) view), bias, constant scale/shift, an NHWC residual, idx."""
    gen = torch.Generator().manual_seed(seed)
    geometry = ConvGeometry(7, 9, *kernel, *padding, *dilation)
    n = 2
    x = torch.randn(n, 7, 9, c_in, generator=gen)
    w = torch.randn(c_out, c_in, *kernel, generator=gen) / (c_in * kernel[0] * kernel[1]) ** 0.5
    bias, scale, shift = (torch.randn(c_out, generator=gen) for _ in range(3))
    residual = torch.randn(n, geometry.out_height, geometry.out_width, c_out, generator=gen)
    idx = (torch.rand(n * geometry.out_height * geometry.out_width, generator=gen) < 0.6).nonzero().squeeze(1)
    leaves = dict(x=x, w=w, bias=bias, residual=residual)
    leaves = {k: v.to(device).requires_grad_(True) for k, v in leaves.items()}
    return dict(geometry=geometry, idx=idx.to(device), scale=scale.to(device), shift=shift.to(device), relu=relu,
                padding=list(padding), dilation=list(dilation), **leaves)


def _forward(pr, *, taps=False):
    tap_rows = tap_padding = None
    if taps and not pr["geometry"].is_pointwise:
        tap_rows, tap_padding = pr["geometry"].tap_table(pr["idx"])
    return OPS.region_conv2d_rows(
        pr["x"], pr["w"].permute(2, 3, 1, 0), pr["idx"], pr["bias"], pr["scale"], pr["shift"], pr["residual"],
        tap_rows, tap_padding, pr["padding"], pr["dilation"], 0.5, pr["relu"])


def _dense_reference(pr):
    """float64: act(residual + 0.5 * ((conv + bias) * scale + shift)) at idx, act(residual) elsewhere."""
    x = pr["x"].detach().double().permute(0, 3, 1, 2)
    conv = F.conv2d(x, pr["w"].detach().double(), pr["bias"].detach().double(), padding=pr["padding"],
                    dilation=pr["dilation"]).permute(0, 2, 3, 1)
    res = pr["residual"].detach().double()
    y = res + 0.5 * (conv * pr["scale"].double() + pr["shift"].double())
    active = torch.zeros(res.shape[:3].numel(), dtype=torch.bool, device=res.device)
    active[pr["idx"]] = True
    y = torch.where(active.view(*res.shape[:3], 1), y, res)
    return torch.relu(y) if pr["relu"] else y


@pytest.mark.parametrize("c_in, c_out, kernel, padding, dilation", CASES)
def test_region_conv_ops_equal_twins_forward_and_backward(c_in, c_out, kernel, padding, dilation):
    relu = c_in % 2 == 0
    results = {}
    for path in ("twin", "triton"):
        device = torch.device("cpu") if path == "twin" else DEVICE
        pr = _problem(c_in, c_out, kernel, padding, dilation, seed=c_in * 100 + c_out, relu=relu, device=device)
        with (_triton() if path == "triton" else contextlib.nullcontext()):
            y = _forward(pr, taps=path == "twin")
            assert y.shape == (2, pr["geometry"].out_height, pr["geometry"].out_width, c_out) and y.is_contiguous()
            grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device)
            grads = torch.autograd.grad(y, [pr[k] for k in ("x", "w", "bias", "residual")], grad_out)
        torch.testing.assert_close(y.double(), _dense_reference(pr), rtol=1e-5, atol=1e-5)
        results[path] = [t.detach().cpu() for t in (y, *grads)]
    for name, twin, tri in zip(("out", "grad_x", "grad_w", "grad_bias", "grad_residual"), *results.values()):
        torch.testing.assert_close(tri, twin, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_backward_op_returns_only_what_is_needed(monkeypatch):
    """Unneeded gradients come back as empty tensors; inside ``triton_on_cpu()`` the CPU kernel runs
    the Triton launchers (counted), outside it the twin."""
    from sparsecascade.ops import library

    launched = []
    launchers = library.triton_region_conv
    monkeypatch.setattr(library, "triton_region_conv", lambda: launched.append(1) or launchers())
    pr = _problem(16, 16, (3, 3), (1, 1), (1, 1), seed=3, relu=False)
    w = pr["w"].detach().permute(2, 3, 1, 0)
    grad_rows = torch.randn(pr["idx"].numel(), 16, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    args = (grad_rows, pr["x"].detach(), w, pr["idx"], None, None, None, None, pr["padding"], pr["dilation"])
    if DEVICE.type == "cpu":
        OPS.region_conv2d_rows_backward(*args, True, True)
        assert not launched, "the CPU kernel ran Triton outside triton_on_cpu()"
    for need in ((True, False), (False, True)):
        with _triton():
            gx, gw = OPS.region_conv2d_rows_backward(*args, *need)
        assert launched, "the Triton path did not run the Triton launchers"
        assert (gx.shape == pr["x"].shape) == need[0] and (gx.numel() == 0) == (not need[0])
        assert (gw.shape == w.shape) == need[1] and (gw.numel() == 0) == (not need[1])
        assert gx.dtype == gw.dtype == torch.float32


def test_confidence_op_equals_twin():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(300, 21, generator=gen) * 3
    active = torch.rand(300, generator=gen) < 0.7
    for act in (None, active):
        twin = OPS.confidence_threshold_rows(logits, 0.8, act)
        with _triton():
            tri = OPS.confidence_threshold_rows(logits.to(DEVICE), 0.8, None if act is None else act.to(DEVICE))
        for t, r in zip(twin, tri):
            torch.testing.assert_close(r.cpu(), t, rtol=1e-6, atol=1e-6)


def _opcheck_args(pr):
    w = pr["w"].permute(2, 3, 1, 0)
    forward = (pr["x"], w, pr["idx"], pr["bias"], pr["scale"], pr["shift"], pr["residual"], None, None,
               pr["padding"], pr["dilation"], 0.5, pr["relu"])
    grad_rows = torch.randn(pr["idx"].numel(), w.shape[-1], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    rows, padding = pr["geometry"].tap_table(pr["idx"])
    backward = (grad_rows, pr["x"].detach(), w.detach(), pr["idx"], rows, padding, None, None, pr["padding"],
                pr["dilation"], True, True)
    return forward, backward


@pytest.mark.parametrize("which", ["forward", "forward-triton", "backward", "confidence"])
def test_opcheck(which):
    """Schema, fake implementation against the real kernel, autograd registration, AOT dispatch with
    dynamic shapes. "forward-triton": the forward (and its backward) on the Triton path."""
    pr = _problem(16, 16, (3, 3), (1, 1), (1, 1), seed=11, relu=True)
    forward, backward = _opcheck_args(pr)
    if which == "confidence":
        gen = torch.Generator().manual_seed(2)
        op, args = OPS.confidence_threshold_rows, (torch.randn(64, 5, generator=gen).to(DEVICE), 0.5,
                                                   (torch.rand(64, generator=gen) < 0.5).to(DEVICE))
    else:
        op, args = (OPS.region_conv2d_rows, forward) if which.startswith("forward") else (
            OPS.region_conv2d_rows_backward, backward)
    with (_triton() if which == "forward-triton" else contextlib.nullcontext()):
        report = torch.library.opcheck(op, args)
    assert set(report.values()) == {"SUCCESS"}, report


def test_compile_traces_the_ops_without_graph_breaks():
    """torch.compile (aot_eager on CPU): a confidence threshold feeding its compacted rows to a
    region conv, forward and backward, one graph, the same numbers as eager; each op one node."""
    if DEVICE.type != "cpu":
        pytest.skip("the CPU kernels: on a GPU the ops decompose (test_compile_sees_triton_launches_on_cuda)")
    pr = _problem(16, 16, (3, 3), (1, 1), (1, 1), seed=13, relu=True)
    logits = torch.randn(2 * 7 * 9, 4, generator=torch.Generator().manual_seed(3)) * 3

    def f(x, w, bias, residual, logits):
        _, _, _, _, next_idx = OPS.confidence_threshold_rows(logits, 0.7, None)
        y = OPS.region_conv2d_rows(x, w.permute(2, 3, 1, 0), next_idx, bias, pr["scale"], pr["shift"], residual,
                                   None, None, [1, 1], [1, 1], 0.5, True)
        return (y * y).sum()

    leaves = [pr[k] for k in ("x", "w", "bias", "residual")]
    explanation = torch._dynamo.explain(f)(*leaves, logits)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    graphs = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def keep(g, _):
            graphs.append(g)
            return make_boxed_func(g)

        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend=backend)(*leaves, logits)
    got_grads = torch.autograd.grad(got, leaves)
    want = f(*leaves, logits)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    code = "\n".join(g.code for g in graphs)
    for name in ("confidence_threshold_rows", "region_conv2d_rows.default", "region_conv2d_rows_backward"):
        assert f"torch.ops.sparsecascade.{name}" in code, name
    # the aot_eager backend as the task names it, too
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves, logits), want)


# Run without TRITON_INTERPRET: the kernels are @triton.jit functions that ``wrap_triton`` records.
# No GPU needed: fake CUDA tensors, and Triton's active driver replaced by one that names sm_90
# (torch's mutation analysis compiles each kernel to TTIR); the SM count is pinned. The graph runs
# nowhere (fake tensors): what is checked is what AOTAutograd hands to inductor.
_TRACE_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch._functorch.aot_autograd import aot_function
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    import sparsecascade.kernels.region_conv.triton_backward as bwd
    import sparsecascade.kernels.region_conv.triton_common as common
    from sparsecascade.ops.library import triton_ops

    class Sm90Driver:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(Sm90Driver())
    bwd.num_sms = common.num_sms = lambda device: 132
    ops = triton_ops()
    mode = sys.argv[1]
    torch.use_deterministic_algorithms(mode == "deterministic")
    dtype = torch.float16 if mode == "deterministic" else torch.float32
    with FakeTensorMode(shape_env=ShapeEnv()):
        x = torch.empty(2, 6, 7, 16, device="cuda", dtype=dtype)
        w = torch.empty(32, 16, 3, 3, device="cuda", dtype=dtype)
        b = torch.empty(32, device="cuda", dtype=dtype)
        logits = torch.empty(84, 5, device="cuda")
        grad_out = torch.empty(2, 6, 7, 32, device="cuda")

    def f(x, w, b, logits, grad_out):
        if mode == "data-dependent-rows":  # P known only at run time: the active set compacted in the graph
            idx = ops.confidence_threshold_rows(logits, 0.5, None)[4]
        else:
            idx = torch.arange(0, 84, 2, device="cuda")
        wv = w.permute(2, 3, 1, 0)
        y = ops.region_conv2d_rows(x, wv, idx, b, None, None, None, None, None, [1, 1], [1, 1], 1.0, True)
        grad_rows = grad_out.reshape(-1, 32).index_select(0, idx)
        gx, gw = ops.region_conv2d_rows_backward(grad_rows, x, wv, idx, None, None, None, None, [1, 1], [1, 1],
                                                 True, True)
        return y.relu() * 2, gx + 1, gw

    class Traced(Exception):
        pass

    graphs = []
    def keep(gm, _):  # the graph inductor would compile; stop there (nothing can run it here)
        graphs.append(gm)
        raise Traced

    try:
        aot_function(f, fw_compiler=keep)(x, w, b, logits, grad_out)
    except Traced:
        pass
    nodes = [n for n in graphs[0].graph.nodes if n.op == "call_function"]
    launches = [n for n in nodes if "triton_kernel_wrapper" in str(n.target)]

    def name(kernel):  # through autotuner, heuristics and @triton.jit wrappers to the Python function
        while hasattr(kernel, "fn"):
            kernel = kernel.fn
        return kernel.__name__

    print(json.dumps({
        "kernels": [name(kernel_side_table.get_kernel(n.kwargs["kernel_idx"])) for n in launches],
        "cloned": [list(n.kwargs["tensors_to_clone"]) for n in launches],
        "symbolic_rows": [isinstance(n.kwargs["kwargs"].get("P"), torch.fx.Node) for n in launches],
        "targets": sorted({str(n.target) for n in nodes}),
        "mutated_inputs": [n.name for n in graphs[0].graph.nodes if n.op == "placeholder"
                           and any(u.target == torch.ops.aten.copy_.default for u in n.users)],
    }))
''')


@pytest.mark.parametrize("mode", ["autotune", "deterministic", "data-dependent-rows"])
def test_compile_sees_triton_launches_on_cuda(mode):
    """With CUDA tensors and compiled Triton, AOTAutograd traces into the region-conv ops: the graph
    holds the four launches (forward; input map, grad-input, grad-weight) as
    triton_kernel_wrapper_functional nodes beside the torch ops around them, no opaque region-conv
    op, and each launch writes only its outputs (idx and the inputs are read-only: nothing is copied
    back into an input). "data-dependent-rows": idx comes from the confidence op (which stays one
    node), so P is symbolic: the launches take it as a graph value, not a constant."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["kernels"] == ["region_conv2d_fwd_kernel", "region_conv2d_input_map_kernel", "region_conv2d_bwd_input_kernel",
                              "region_conv2d_bwd_weight_kernel"], got
    assert got["cloned"] == [["out_ptr"], ["pos_ptr", "touched_ptr"], ["gx_ptr"], ["gw_ptr"]], got
    opaque = [t for t in got["targets"] if "sparsecascade" in t]
    assert opaque == (["sparsecascade.confidence_threshold_rows.default"] if mode == "data-dependent-rows" else []), got
    # P is an argument of the forward, input-map and grad-weight launches (grad-input runs over M rows)
    assert got["symbolic_rows"] == [mode == "data-dependent-rows", mode == "data-dependent-rows", False,
                                    mode == "data-dependent-rows"], got
    assert not got["mutated_inputs"], got
