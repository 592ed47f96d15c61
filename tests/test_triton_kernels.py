"""The Triton launchers against their torch twins and the dense references (DESIGN.md section 2).

Under TRITON_INTERPRET=1 (set by conftest.py) the kernels run on CPU tensors; on a CUDA machine
without it they run on the GPU. The interpreter pays per interpreted loop iteration, so the
drawn problems are sized by a budget of kernel-loop iterations rather than by pixels.

Channel counts: odd ones (1, 5, 17, 33: partial blocks, masked loads) and aligned ones (16, 64,
256: what every real backbone layer has). On a GPU, aligned counts compile a different kernel
(Triton specialises integer arguments divisible by 16: vector loads and cp.async pipelining),
so both kinds are run here, forward and backward.

What the interpreter cannot check: it runs the kernels as numpy code, so it compiles nothing (no
PTX, no vectorised or pipelined path, no register or shared-memory limits) and it upcasts
low-precision dots to fp32 (``DOT_FP32``: fp16/bf16 tensor-core products and their rounding are
not exercised). That every kernel and autotune config compiles for sm_80 and sm_90 in fp32, fp16
and bf16, with the aligned-channel specialisation, is checked by the ahead-of-time compile test
(tests/test_triton_compile.py, running sparsecascade.kernels._aot_check); the low-precision
numerics by running this file on a CUDA machine without TRITON_INTERPRET.

TF32: on a GPU the launchers follow torch's cuDNN TF32 switch (on by default, as for ``F.conv2d``);
on a CPU (the interpreter) they are exact, as ``F.conv2d`` is there, unless ``allow_tf32=True`` asks
for TF32: then the operands are rounded to TF32 as on the GPU and the interpreter's fp32 dot adds
no error of its own (``test_tf32_rounds_operands_to_nearest``). The exact fp32 checks here run with
the switch off (``_exact_fp32``); ``test_forward_tf32_follows_torch_switch`` checks TF32 against
``F.conv2d`` under the same switch. Real sizes, TF32 on tensor cores, NaN propagation,
int64 offsets beyond 2^31 elements, bitwise determinism and timing against cuDNN need a GPU:
``bash benchmarks/gpu/validate.sh`` (which also runs this file there, TRITON_INTERPRET=0).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecascade.kernels import (
    TRITON_AVAILABLE,
    ConvGeometry,
    confidence_threshold_forward_torch,
    region_conv2d_backward_torch,
    region_conv2d_forward_torch,
    triton_interpreting,
)

if not TRITON_AVAILABLE or not (triton_interpreting() or torch.cuda.is_available()):
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from sparsecascade.kernels.confidence.triton_kernel import confidence_threshold_forward_triton  # noqa: E402
from sparsecascade.kernels.region_conv.triton_backward import region_conv2d_backward_triton  # noqa: E402
from sparsecascade.kernels.region_conv.triton_forward import region_conv2d_forward_triton  # noqa: E402

DEVICE = torch.device("cpu" if triton_interpreting() else "cuda")
KERNEL_SIZES = [(1, 1), (3, 3), (5, 5), (1, 7), (7, 1), (1, 3), (3, 1)]
CHANNELS = [1, 5, 17, 33]
ALIGNED_CHANNELS = [(16, 16), (64, 16), (16, 64), (256, 16), (16, 256)]  # (C_in, C_out)
CONV_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Interpreted (tap, 32-channel block, 32-row block) iterations allowed per drawn problem.
ITERATION_BUDGET = 400


@contextlib.contextmanager
def cudnn_tf32(enabled: bool):
    """torch's cuDNN convolution TF32 switch set to ``enabled`` inside the block (the new API where
    torch has it: mixing it with the legacy flag makes torch refuse to read either)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    new_api = conv is not None and hasattr(conv, "fp32_precision")
    before = conv.fp32_precision if new_api else torch.backends.cudnn.allow_tf32
    if new_api:
        conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        if new_api:
            conv.fp32_precision = before
        else:
            torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 checks here are exact (1e-5): TF32 off unless a test turns it on."""
    with cudnn_tf32(False):
        yield


def _blocks(n: int, block: int = 32) -> int:
    return max(1, -(-n // block))


@st.composite
def conv_problems(draw):
    """A region-conv problem: geometry, shapes, dtype, mask kind, epilogue terms and a seed."""
    kh, kw = draw(st.sampled_from(KERNEL_SIZES))
    if draw(st.booleans()):
        pad_h = pad_w = draw(st.integers(0, 3))
    else:
        pad_h, pad_w = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dil_h, dil_w = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    c_in, c_out = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(CHANNELS))
    # The smallest input with a non-empty output, then a few pixels more.
    min_h = max(1, dil_h * (kh - 1) + 1 - 2 * pad_h)
    min_w = max(1, dil_w * (kw - 1) + 1 - 2 * pad_w)
    height = draw(st.integers(min_h, min_h + 5))
    width = draw(st.integers(min_w, min_w + 5))
    geometry = ConvGeometry(height, width, kh, kw, pad_h, pad_w, dil_h, dil_w)
    per_row_block = kh * kw * _blocks(c_in) * _blocks(c_out)
    max_rows = 32 * max(1, ITERATION_BUDGET // per_row_block)
    max_batch = max(1, min(3, max_rows // (geometry.out_height * geometry.out_width)))
    n_img = draw(st.integers(1, max_batch))
    return dict(
        geometry=geometry, n_img=n_img, c_in=c_in, c_out=c_out,
        dtype=draw(st.sampled_from(CONV_DTYPES)),
        mask=draw(st.sampled_from(["empty", "full", "random", "random"])),
        max_rows=max_rows,
        bias=draw(st.booleans()), scale=draw(st.booleans()), shift=draw(st.booleans()),
        residual=draw(st.booleans()), res_scale=draw(st.sampled_from([1.0, 0.17, -2.0])),
        relu=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _make_conv_tensors(pr: dict):
    """Inputs on DEVICE: x (N,H,W,C_in), weight (KH,KW,C_in,C_out), mask (N,H',W') and idx."""
    g: ConvGeometry = pr["geometry"]
    gen = torch.Generator().manual_seed(pr["seed"])
    x = torch.randn(pr["n_img"], g.height, g.width, pr["c_in"], generator=gen).to(pr["dtype"])
    weight = (torch.randn(g.kernel_h, g.kernel_w, pr["c_in"], pr["c_out"], generator=gen)
              / (g.taps * pr["c_in"]) ** 0.5).to(pr["dtype"])
    shape = (pr["n_img"], g.out_height, g.out_width)
    if pr["mask"] == "empty":
        mask = torch.zeros(shape, dtype=torch.bool)
    elif pr["mask"] == "full":
        mask = torch.ones(shape, dtype=torch.bool)
    else:
        mask = torch.rand(shape, generator=gen) < torch.rand((), generator=gen)
    # Keep the row count within the interpreter budget: drop the excess active pixels.
    flat = mask.view(-1)
    on = flat.nonzero().squeeze(1)
    flat[on[pr["max_rows"]:]] = False
    idx = flat.nonzero().squeeze(1)
    return x.to(DEVICE), weight.to(DEVICE), mask.to(DEVICE), idx.to(DEVICE), gen


def _epilogue_terms(pr: dict, gen: torch.Generator):
    c_out, g = pr["c_out"], pr["geometry"]
    def vec() -> torch.Tensor:
        return torch.randn(c_out, generator=gen).to(DEVICE)

    return dict(
        bias=vec() if pr["bias"] else None,
        scale=vec() if pr["scale"] else None,
        shift=vec() if pr["shift"] else None,
        residual=(torch.randn(pr["n_img"], g.out_height, g.out_width, c_out, generator=gen)
                  .to(pr["dtype"]).to(DEVICE) if pr["residual"] else None),
        res_scale=pr["res_scale"],
        relu=pr["relu"],
    )


def _dense_forward(x, weight, geometry: ConvGeometry, terms) -> torch.Tensor:
    """float64 NHWC reference: the dense conv2d, then the epilogue, at every output pixel."""
    x64 = x.double().permute(0, 3, 1, 2).contiguous()
    w64 = weight.double().permute(3, 2, 0, 1).contiguous()  # (KH,KW,Ci,Co) -> (Co,Ci,KH,KW)
    y = F.conv2d(x64, w64, padding=(geometry.pad_h, geometry.pad_w), dilation=(geometry.dil_h, geometry.dil_w))
    y = y.permute(0, 2, 3, 1)
    if terms["bias"] is not None:
        y = y + terms["bias"].double()
    if terms["scale"] is not None:
        y = y * terms["scale"].double()
    if terms["shift"] is not None:
        y = y + terms["shift"].double()
    if terms["residual"] is not None:
        y = terms["residual"].double() + terms["res_scale"] * y
    if terms["relu"]:
        y = torch.relu(y)
    return y


def _assert_rows_close(out, twin, ref, mask, dtype):
    """Active rows: close to the float64 reference and to the twin; other rows: still NaN."""
    assert torch.isnan(out[~mask]).all(), "a row outside idx was written"
    got, twin_rows, ref_rows = out[mask].double(), twin[mask].double(), ref[mask]
    assert torch.isfinite(got).all(), "an active row was not written"
    scale = 1.0 + (ref_rows.abs().max().item() if ref_rows.numel() else 0.0)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref_rows, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(got, twin_rows, rtol=1e-5, atol=1e-5 * scale)
    else:
        # FlashAttention's rule: the kernel's error is at most about twice that of torch in the
        # same precision (the twin), plus a rounding step; and it stays near the twin.
        if got.numel():
            err, twin_err = (got - ref_rows).abs().max().item(), (twin_rows - ref_rows).abs().max().item()
            ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
            assert err <= 2 * twin_err + ulp * scale, f"error {err} vs twin {twin_err}"
        torch.testing.assert_close(got, twin_rows, rtol=1e-2, atol=1e-2 * scale)


def aligned_problem(c_in: int, c_out: int, dtype: torch.dtype, seed: int, **epilogue) -> dict:
    """A fixed 3x3 problem with aligned channels: every epilogue term, a random mask, few rows."""
    terms = dict(bias=True, scale=True, shift=True, residual=True, res_scale=0.5, relu=True)
    terms.update(epilogue)
    return dict(geometry=ConvGeometry(5, 6, 3, 3, 1, 1), n_img=1, c_in=c_in, c_out=c_out, dtype=dtype,
                mask="random", max_rows=32, seed=seed, **terms)


@settings(deadline=None)  # example count: the hypothesis profile (conftest.py)
@given(pr=conv_problems())
def test_forward_matches_twin_and_dense(pr):
    check_forward(pr)


@pytest.mark.parametrize("dtype", CONV_DTYPES)
@pytest.mark.parametrize("c_in, c_out", ALIGNED_CHANNELS)
def test_forward_aligned_channels(c_in, c_out, dtype):
    check_forward(aligned_problem(c_in, c_out, dtype, seed=c_in * 1000 + c_out))


def check_forward(pr: dict) -> None:
    x, weight, mask, idx, gen = _make_conv_tensors(pr)
    g, terms = pr["geometry"], _epilogue_terms(pr, gen)
    out_shape = (pr["n_img"], g.out_height, g.out_width, pr["c_out"])
    out = torch.full(out_shape, float("nan"), dtype=pr["dtype"], device=DEVICE)
    twin = out.clone()
    region_conv2d_forward_triton(x, weight, idx, out, g, **terms)
    region_conv2d_forward_torch(x, weight, idx, twin, g, **terms)
    _assert_rows_close(out, twin, _dense_forward(x, weight, g, terms), mask, pr["dtype"])


@pytest.mark.parametrize("dtype", CONV_DTYPES)
def test_forward_residual_in_place(dtype):
    """residual may be ``out`` itself (in-place residual blocks): each row is read, then written."""
    g = ConvGeometry(6, 5, 3, 3, 1, 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, 17, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(3, 3, 17, 33, generator=gen) / 12).to(dtype).to(DEVICE)
    idx = (torch.rand(2 * 6 * 5, generator=gen) < 0.6).nonzero().squeeze(1).to(DEVICE)
    base = torch.randn(2, 6, 5, 33, generator=gen).to(dtype).to(DEVICE)
    out, twin = base.clone(), base.clone()
    region_conv2d_forward_triton(x, weight, idx, out, g, residual=out, res_scale=0.5, relu=True)
    region_conv2d_forward_torch(x, weight, idx, twin, g, residual=twin, res_scale=0.5, relu=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, twin, rtol=tol, atol=tol)
    untouched = torch.ones(2 * 6 * 5, dtype=torch.bool, device=DEVICE)
    untouched[idx] = False
    assert torch.equal(out.view(-1, 33)[untouched], base.view(-1, 33)[untouched])


def test_forward_padding_never_reads_nan_neighbours():
    """Taps in the zero padding read 0: NaN-free rows next to the border stay NaN-free, while a
    NaN inside the receptive field does propagate (the dense conv reads it), through relu too."""
    g = ConvGeometry(4, 4, 3, 3, 1, 1)
    x = torch.ones(1, 4, 4, 5, device=DEVICE)
    x[0, 3, 3, 0] = float("nan")
    weight = torch.ones(3, 3, 5, 16, device=DEVICE)
    idx = torch.tensor([0, 15], device=DEVICE)  # a corner far from the NaN, and the NaN pixel
    out = torch.zeros(1, 4, 4, 16, device=DEVICE)
    region_conv2d_forward_triton(x, weight, idx, out, g, relu=True)
    assert torch.equal(out[0, 0, 0], torch.full((16,), 4 * 5.0, device=DEVICE))
    assert torch.isnan(out[0, 3, 3]).all()


@settings(deadline=None)
@given(pr=conv_problems(), need=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_backward_matches_twin_and_dense(pr, need):
    check_backward(pr, need)


@pytest.mark.parametrize("dtype", CONV_DTYPES)
@pytest.mark.parametrize("c_in, c_out", ALIGNED_CHANNELS)
def test_backward_aligned_channels(c_in, c_out, dtype):
    check_backward(aligned_problem(c_in, c_out, dtype, seed=c_in + c_out), (True, True))


def check_backward(pr: dict, need: tuple[bool, bool]) -> None:
    x, weight, mask, idx, gen = _make_conv_tensors(pr)
    g = pr["geometry"]
    # fp16/bf16: the launcher rounds grad_rows to the input dtype for the tensor cores (as cuDNN's
    # backward takes grad_output in that dtype); drawn already rounded, every result stays exact
    grad_rows = torch.randn(idx.numel(), pr["c_out"], generator=gen).to(pr["dtype"]).float().to(DEVICE)
    need_input, need_weight = need
    gx, gw = region_conv2d_backward_triton(grad_rows, x, weight, idx, g, need_input=need_input, need_weight=need_weight)
    tx, tw = region_conv2d_backward_torch(grad_rows, x, weight, idx, g, need_input=need_input, need_weight=need_weight)
    assert (gx is None) != need_input and (gw is None) != need_weight

    # float64 autograd through the dense conv, restricted to the active rows.
    x64 = x.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    y = F.conv2d(x64.permute(0, 3, 1, 2).contiguous(), w64.permute(3, 2, 0, 1).contiguous(),
                 padding=(g.pad_h, g.pad_w), dilation=(g.dil_h, g.dil_w))
    rows = y.permute(0, 2, 3, 1).reshape(-1, pr["c_out"]).index_select(0, idx)
    ref_x, ref_w = torch.autograd.grad((rows * grad_rows.double()).sum(), (x64, w64), allow_unused=True)
    for got, twin, ref, shape in ((gx, tx, ref_x, x.shape), (gw, tw, ref_w, weight.shape)):
        if got is None:
            continue
        ref = torch.zeros(shape, dtype=torch.float64, device=DEVICE) if ref is None else ref
        assert got.dtype == torch.float32 and got.shape == shape
        scale = 1.0 + ref.abs().max().item()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(got, twin, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("kernel, pad", [((1, 1), 0), ((1, 1), 1), ((3, 1), 1)])
def test_backward_pointwise_and_split_paths(kernel, pad):
    """Fixed problems for the paths a draw may miss: the pointwise conv stores grad_x without
    atomics; few weight tiles with many rows split the P reduction over several programs."""
    g = ConvGeometry(9, 7, *kernel, pad, pad)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 7, 17, generator=gen).to(DEVICE)
    weight = torch.randn(*kernel, 17, 5, generator=gen).to(DEVICE)
    idx = (torch.rand(2 * g.out_height * g.out_width, generator=gen) < 0.8).nonzero().squeeze(1).to(DEVICE)
    assert idx.numel() > 64  # several row blocks
    grad_rows = torch.randn(idx.numel(), 5, generator=gen).to(DEVICE)
    got = region_conv2d_backward_triton(grad_rows, x, weight, idx, g)
    twin = region_conv2d_backward_torch(grad_rows, x, weight, idx, g)
    for a, b in zip(got, twin):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p_fraction", [0.0, 0.05, 0.9])
def test_launch_choices_for_a_symbolic_row_count(monkeypatch, p_fraction):
    """Under torch.compile P may be symbolic (``triton_common.known`` returns None): the launchers
    then launch even for P = 0 (an empty grid), bound the input-side row list by N*H*W, fix the
    grad-weight split by the other shapes (splits past the last row store zeros) and prune tiles by
    channels alone. Those choices run here for real, P concrete but treated as unknown."""
    from sparsecascade.kernels.region_conv import triton_backward, triton_forward

    g = ConvGeometry(9, 7, 3, 3, 1, 1)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 7, 16, generator=gen).to(DEVICE)
    weight = (torch.randn(3, 3, 16, 5, generator=gen) / 12).to(DEVICE)
    idx = (torch.rand(2 * 63, generator=gen) < p_fraction).nonzero().squeeze(1).to(DEVICE)
    grad_rows = torch.randn(idx.numel(), 5, generator=gen).to(DEVICE)
    want_out = torch.full((2, 9, 7, 5), float("nan"), device=DEVICE)
    region_conv2d_forward_torch(x, weight, idx, want_out, g, relu=True)
    want = region_conv2d_backward_torch(grad_rows, x, weight, idx, g)
    unknown = lambda n: None  # noqa: E731
    monkeypatch.setattr(triton_forward, "known", unknown)
    monkeypatch.setattr(triton_backward, "known", unknown)
    monkeypatch.setattr(triton_backward, "num_sms", lambda device: 64)  # a GPU's worth of splits
    split, _ = triton_backward.grad_weight_split(idx.numel(), g, 16, 5, DEVICE)
    assert split > max(1, idx.numel() // 32)  # more splits than rows to fill: some store zeros
    out = torch.full((2, 9, 7, 5), float("nan"), device=DEVICE)
    region_conv2d_forward_triton(x, weight, idx, out, g, relu=True)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5, equal_nan=True)
    for got, ref in zip(region_conv2d_backward_triton(grad_rows, x, weight, idx, g), want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_forward_tf32_follows_torch_switch(enabled):
    """allow_tf32=None reads torch's cuDNN TF32 switch at call time; the kernel's error against a
    float64 reference stays within twice F.conv2d's under the same switch (plus an fp32 atol)."""
    from sparsecascade.kernels.region_conv.triton_common import dot_precision

    g = ConvGeometry(8, 8, 3, 3, 1, 1)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 8, 64, generator=gen).to(DEVICE)
    w = (torch.randn(3, 3, 64, 64, generator=gen) / 24).to(DEVICE)
    idx = (torch.rand(2 * 64, generator=gen) < 0.5).nonzero().squeeze(1).to(DEVICE)
    nchw, oihw = x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1)
    with cudnn_tf32(enabled):
        assert dot_precision(torch.float32, None, torch.device("cuda")) == ("tf32" if enabled else "ieee")
        assert dot_precision(torch.float32, None, torch.device("cpu")) == "ieee"  # as F.conv2d on a CPU
        for device in ("cpu", "cuda"):  # an explicit choice wins
            assert dot_precision(torch.float32, not enabled, torch.device(device)) == ("ieee" if enabled else "tf32")
        out = torch.zeros(2, 8, 8, 64, device=DEVICE)
        region_conv2d_forward_triton(x, w, idx, out, g)
        y_torch = F.conv2d(nchw, oihw, padding=1).permute(0, 2, 3, 1)
    ref = F.conv2d(nchw.double(), oihw.double(), padding=1).permute(0, 2, 3, 1)

    def rows(t):
        return t.reshape(-1, 64).index_select(0, idx).double()

    err, torch_err = (rows(out) - rows(ref)).abs().max().item(), (rows(y_torch) - rows(ref)).abs().max().item()
    if enabled:  # cuDNN may pick a non-TF32 algorithm: also allow the error of TF32-rounded operands
        emulated = F.conv2d(_tf32_round(nchw), _tf32_round(oihw), padding=1).permute(0, 2, 3, 1)
        torch_err = max(torch_err, (rows(emulated) - rows(ref)).abs().max().item())
    assert err <= 2 * torch_err + 1e-5 * (1 + rows(ref).abs().max().item()), (err, torch_err)


def _tf32_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest TF32 value, ties away from zero (PTX ``cvt.rna.tf32.f32``, what cuDNN
    feeds its TF32 tensor cores), as float64."""
    bits = t.float().contiguous().view(torch.int32)
    rounded = torch.where((bits & 0x7F800000) == 0x7F800000, bits, (bits + 0x1000) & ~0x1FFF)
    return rounded.view(torch.float32).double()


def test_repeat_launch_skips_the_autotuner(monkeypatch):
    """The first launch of an autotuning key goes through Triton's autotuner; later ones go straight
    to the jitted kernel with the config it chose (the wrappers cost half of a launch's host time on
    a GPU machine) and compute the same rows; another key (C_out) enters the autotuner again."""
    from sparsecascade.kernels.region_conv import triton_forward as fwd

    g = ConvGeometry(5, 6, 3, 3, 1, 1)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(1, 5, 6, 40, generator=gen).to(DEVICE)  # C_in = 40: no other test's key
    idx = torch.arange(0, 30, 2, device=DEVICE)
    tuned = fwd._fwd_tuned["ieee"]
    entered = []
    run = tuned.run
    monkeypatch.setattr(tuned, "run", lambda *a, **k: entered.append(1) or run(*a, **k))
    for c_out in (48, 48, 48, 24):
        w = (torch.randn(3, 3, 40, c_out, generator=gen) / 19).to(DEVICE)
        out = torch.zeros(1, 5, 6, c_out, device=DEVICE)
        region_conv2d_forward_triton(x, w, idx, out, g, relu=True)
        ref = torch.relu(F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), padding=1)).permute(0, 2, 3, 1)
        torch.testing.assert_close(out.reshape(-1, c_out)[idx], ref.reshape(-1, c_out)[idx], atol=1e-5, rtol=1e-5)
    assert len(entered) == 2  # C_out 48 and 24 once each, never the repeats


@pytest.mark.parametrize("kernel", [(3, 3), (1, 1)])
def test_tf32_rounds_operands_to_nearest(kernel):
    """With TF32 on, every kernel's products are those of operands rounded to the nearest TF32
    value: equal, to fp32 accumulation, to a float64 convolution of the rounded operands (forward,
    grad-input, grad-weight). Tensor cores truncate fp32 operands they are given raw (a biased
    error, 2.4-3.2x cuDNN's on an H200); without the kernels' rounding the GPU fails this test by
    ~1e-3, and so does the interpreter (exact fp32 products)."""
    kh, kw = kernel
    g = ConvGeometry(8, 8, kh, kw, kh // 2, kw // 2)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 8, 64, generator=gen).to(DEVICE)
    w = (torch.randn(kh, kw, 64, 32, generator=gen) / (8 * kh)).to(DEVICE)
    idx = (torch.rand(2 * 64, generator=gen) < 0.6).nonzero().squeeze(1).to(DEVICE)
    grad_rows = torch.randn(idx.numel(), 32, generator=gen).to(DEVICE)
    out = torch.zeros(2, 8, 8, 32, device=DEVICE)
    region_conv2d_forward_triton(x, w, idx, out, g, allow_tf32=True)
    gx, gw = region_conv2d_backward_triton(grad_rows, x, w, idx, g, allow_tf32=True)

    xr = _tf32_round(x).permute(0, 3, 1, 2).requires_grad_(True)
    wr = _tf32_round(w).permute(3, 2, 0, 1).requires_grad_(True)
    y = F.conv2d(xr, wr, padding=(kh // 2, kw // 2)).permute(0, 2, 3, 1).reshape(-1, 32)
    g_dense = torch.zeros_like(y).index_copy_(0, idx, _tf32_round(grad_rows))
    ref_gx, ref_gw = torch.autograd.grad(y, (xr, wr), g_dense)
    for name, got, ref in (("forward", out.reshape(-1, 32)[idx], y[idx]),
                           ("grad_input", gx, ref_gx.permute(0, 2, 3, 1)),
                           ("grad_weight", gw, ref_gw.permute(2, 3, 1, 0))):
        err = (got.double() - ref.detach()).abs().max().item()
        assert err <= 2e-6 * (1 + ref.abs().max().item()), (name, err)


@pytest.mark.parametrize("dtype", CONV_DTYPES)
def test_weight_read_through_strides(dtype):
    """The launchers take the (KH, KW, C_in, C_out) view of an OIHW weight as it is, contiguous or
    channels_last (no copy): the same results as from a contiguous copy, forward and backward."""
    g = ConvGeometry(6, 7, 3, 3, 1, 1)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 6, 7, 64, generator=gen).to(dtype).to(DEVICE)
    w_oihw = (torch.randn(32, 64, 3, 3, generator=gen) / 24).to(dtype).to(DEVICE)
    idx = (torch.rand(42, generator=gen) < 0.6).nonzero().squeeze(1).to(DEVICE)
    grad_rows = torch.randn(idx.numel(), 32, generator=gen).to(dtype).float().to(DEVICE)
    views = [w_oihw.permute(2, 3, 1, 0), w_oihw.contiguous(memory_format=torch.channels_last).permute(2, 3, 1, 0)]
    copy = views[0].contiguous()
    results = []
    for w in [copy] + views:
        out = torch.zeros(1, 6, 7, 32, dtype=dtype, device=DEVICE)
        region_conv2d_forward_triton(x, w, idx, out, g)
        results.append((out, *region_conv2d_backward_triton(grad_rows, x, w, idx, g)))
    assert not any(v.is_contiguous() for v in views)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-5 if a.dtype == torch.float32 else 1e-2, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# confidence threshold

@st.composite
def confidence_problems(draw):
    return dict(
        m=draw(st.integers(0, 300)),
        c=draw(st.sampled_from([1, 2, 3, 17, 21, 150, 200])),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])),
        active=draw(st.sampled_from(["none", "empty", "full", "random"])),
        rho=draw(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0, 1.1])),
        values=draw(st.sampled_from(["normal", "ties", "special"])),
        strided=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _make_logits(pr: dict):
    gen = torch.Generator().manual_seed(pr["seed"])
    m, c = pr["m"], pr["c"]
    if pr["values"] == "ties":  # few distinct values: argmax ties everywhere, also across class blocks
        logits = torch.randint(-2, 3, (m, c), generator=gen).float()
    else:
        logits = 3 * torch.randn(m, c, generator=gen)
    if pr["values"] == "special" and m > 0:  # NaN, -inf and +inf rows and entries
        rows = torch.randint(m, (4,), generator=gen)
        cols = torch.randint(c, (4,), generator=gen)
        logits[rows[0], cols[0]] = float("nan")
        logits[rows[1], :] = float("-inf")
        logits[rows[2], cols[2]] = float("-inf")
        logits[rows[3], cols[3]] = float("inf")
    logits = logits.to(pr["dtype"])
    if pr["strided"]:  # rows of a wider buffer: row stride > C
        wide = torch.zeros(m, c + 3, dtype=pr["dtype"])
        wide[:, :c] = logits
        logits = wide[:, :c]
    if pr["active"] == "none":
        active = None
    elif pr["active"] == "empty":
        active = torch.zeros(m, dtype=torch.bool)
    elif pr["active"] == "full":
        active = torch.ones(m, dtype=torch.bool)
    else:
        active = torch.rand(m, generator=gen) < 0.5
    return logits.to(DEVICE), None if active is None else active.to(DEVICE)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, as in the twin
@settings(deadline=None)  # example count: the hypothesis profile (conftest.py)
@given(pr=confidence_problems())
def test_confidence_matches_twin(pr):
    logits, active = _make_logits(pr)
    rho = pr["rho"]
    labels, conf, stop, next_active, next_idx = confidence_threshold_forward_triton(logits, rho, active)
    t_labels, t_conf, t_stop, t_next, t_idx = confidence_threshold_forward_torch(logits, rho, active)
    m = pr["m"]
    assert labels.dtype == torch.int64 and conf.dtype == torch.float32
    assert stop.dtype == torch.bool and next_active.dtype == torch.bool and next_idx.dtype == torch.int64
    assert labels.shape == conf.shape == stop.shape == next_active.shape == (m,)
    assert torch.equal(labels, t_labels)  # first argmax; -1 outside active
    torch.testing.assert_close(conf, t_conf, rtol=2e-6, atol=0, equal_nan=True)
    act = torch.ones(m, dtype=torch.bool, device=DEVICE) if active is None else active
    # The decisions are exact functions of the kernel's own confidence ...
    assert torch.equal(stop, act & (conf >= rho))
    assert torch.equal(next_active, act & ~stop)
    assert torch.equal(next_idx, next_active.nonzero().squeeze(1))
    # ... and agree with the twin wherever an ulp of exp() cannot flip them.
    clear = (t_conf - rho).abs() > 1e-5
    assert torch.equal(stop[clear], t_stop[clear])
    if bool(clear.all()):
        assert torch.equal(next_idx, t_idx)


def test_confidence_first_argmax_across_class_blocks():
    """The maximum repeated in a later class block must not replace the first one."""
    logits = torch.zeros(3, 300, device=DEVICE)
    logits[0, [5, 140, 299]] = 7.0
    logits[1, [200, 299]] = 7.0
    logits[2, [299]] = 7.0
    labels, *_ = confidence_threshold_forward_triton(logits, 0.5, None)
    assert labels.tolist() == [5, 200, 299]
