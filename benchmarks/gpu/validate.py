"""GPU validation of the Triton region kernels (issue 13): correctness at real sizes, NaN
propagation, int64 offsets, determinism, every autotune config, kernel time against cuDNN, the
threshold op, and end-to-end LC against the dense network.

Run by ``benchmarks/gpu/validate.sh`` in parts of under 9 minutes each on a bare GPU machine;
each subcommand writes its numbers to ``--out`` (a JSON file) as it goes, so a part cut short
still leaves what it measured:

    python benchmarks/gpu/validate.py correctness --out $OUT/correctness.json
    python benchmarks/gpu/validate.py int64 --out ...
    python benchmarks/gpu/validate.py configs --out ...
    python benchmarks/gpu/validate.py kernels --out ...
    python benchmarks/gpu/validate.py threshold --out ...
    python benchmarks/gpu/validate.py e2e --model lc_resnet50 --out ...

Accuracy rule (FlashAttention's): ``max|y - ref| <= 2 max|y_torch - ref| + atol``, ``ref`` in
float64 from the same (rounded) operands, ``y_torch`` what PyTorch computes in the same precision
(cuDNN, under the same TF32 switch; for TF32 also an emulated TF32 rounding of the operands,
since cuDNN may pick a non-TF32 algorithm). Timing: ``triton.testing.do_bench`` medians (ms),
dense baselines are cuDNN on channels_last tensors with ``cudnn.benchmark = True``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# SPARSECASCADE_VALIDATE_DRY=1 (with TRITON_INTERPRET=1): a dry run of this script's logic on a
# CPU, tiny shapes, the kernels under Triton's interpreter; its numbers mean nothing.
DRY = os.environ.get("SPARSECASCADE_VALIDATE_DRY", "0") == "1"
DEVICE = "cpu" if DRY else "cuda"
FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1)
PAPER_STOPS = (0.23, 0.29)  # Table 1: rho = 0.985 stops 23% at stage 1 and 29% at stage 2
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (name, N, H=W, C_in, C_out, (KH, KW), (pad_h, pad_w), dilation): real layers
CORRECTNESS_CASES = [
    ("3x3 256->256 64x64 n2", 2, 64, 256, 256, (3, 3), (1, 1), 1),        # ResNet layer3 (dilated stage)
    ("3x3 d2 512->512 64x64 n1", 1, 64, 512, 512, (3, 3), (2, 2), 2),     # ResNet layer4, dilation 2
    ("1x1 1088->192 64x64 n2", 2, 64, 1088, 192, (1, 1), (0, 0), 1),      # IRNet block17 branch
    ("1x7 128->160 64x64 n2", 2, 64, 128, 160, (1, 7), (0, 3), 1),        # IRNet: 160 = 2.5 x 64 (masked blocks)
    ("1x1 256->21 64x64 n2", 2, 64, 256, 21, (1, 1), (0, 0), 1),          # a head: unaligned C_out
]
TIMING_CASES = [
    ("3x3 256->256 64x64", 64, 256, 256, (3, 3), (1, 1), 1),
    ("1x1 1088->192 64x64", 64, 1088, 192, (1, 1), (0, 0), 1),
]
INT64_SIZE = (2900, 256)  # (H = W, C): 2.15e9 elements of x
if DRY:
    CORRECTNESS_CASES = [(name.replace("64x64", "6x6"), 1, 6, min(ci, 32) + (ci % 16 != 0), min(co, 40) + (co % 16 != 0),
                          k, p, d) for name, n, hw, ci, co, k, p, d in CORRECTNESS_CASES]
    TIMING_CASES = [(name, 6, 16, 24, k, p, d) for name, hw, ci, co, k, p, d in TIMING_CASES]
    INT64_SIZE = (9, 16)


# ----------------------------------------------------------------------------------------------
# plumbing


def log(*args) -> None:
    print(*args, flush=True)


class Results:
    """Rows appended to a JSON file after every measurement (a cut-short part keeps its numbers)."""

    def __init__(self, path: str | None, command: str):
        self.path = Path(path) if path else None
        self.doc = dict(command=command, environment=environment(), rows=[], failures=[])

    def add(self, row: dict) -> None:
        self.doc["rows"].append(row)
        if row.get("ok") is False:
            self.doc["failures"].append(row.get("name", "?"))
        self.flush()

    def flush(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
            os.replace(tmp, self.path)


def environment() -> dict:
    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sms=props.multi_processor_count, memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


@contextlib.contextmanager
def tf32_switch(enabled: bool):
    """torch's TF32 switches for cuDNN convolutions and matmuls (the new API where torch has it)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
    else:
        before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def precision_context(precision: str):
    return tf32_switch(precision == "tf32")


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest TF32 value (10 mantissa bits, ties to even), as fp32."""
    bits = t.float().contiguous().view(torch.int32)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    special = (bits & 0x7F800000) == 0x7F800000
    return torch.where(special, bits, rounded).view(torch.float32)


def bench_ms(fn, *, rep: int = 100) -> float:
    if DRY:
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=rep, quantiles=[0.5, 0.2, 0.8])[0])


def graph_ms(fn, *, rep: int = 100) -> float | None:
    """The GPU time of ``fn`` alone: replayed from a CUDA graph, so the host's launch cost (Python,
    the autotuner's lookup, Triton's launcher) is not in it. None where capture fails (logged)."""
    if DRY:
        return bench_ms(fn)
    from triton.testing import do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, rep=rep))
    except Exception as exc:  # noqa: BLE001 - a measurement that cannot be taken is reported, not fatal
        log(f"   (CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:200]})")
        torch.cuda.synchronize()
        return None


def host_us(fn, *, calls: int = 50) -> float:
    """The host's time to issue one call of ``fn`` (mean over ``calls`` back-to-back calls, no sync in
    between: at these sizes the GPU keeps up, so this is the launch path's cost)."""
    calls = 2 if DRY else calls  # interpreted kernels: the plumbing only
    fn()  # compiled and autotuned outside the timing
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return 1e6 * elapsed / calls


def profiled_gpu_ms(fn, *, iters: int = 5) -> tuple[float | None, list]:
    """(the GPU's busy time per call of ``fn``: the sum of its kernels' durations from the CUDA
    profiler, one stream so no overlap; the six kernels that took longest, name and ms per call).
    Wall time minus this is the time the GPU waited for the host."""
    if DRY:
        return None, []
    from torch.profiler import ProfilerActivity, profile

    try:
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            sync()
        rows = [(e.key, getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))
                for e in prof.key_averages()]
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        log(f"   (profiler failed: {type(exc).__name__}: {str(exc)[:200]})")
        return None, []
    rows.sort(key=lambda r: -r[1])
    top = [(name[:70], round(us / iters / 1e3, 4)) for name, us in rows[:6]]
    return sum(us for _, us in rows) / iters / 1e3, top


def sync_points(fn) -> dict:
    """The host-side calls in one call of ``fn`` that wait for the GPU (a synchronize, a copy to the
    host, a data-dependent size), by name and count, from the profiler's CPU events."""
    if DRY:
        return {}
    from torch.profiler import ProfilerActivity, profile

    waits = ("Synchronize", "_local_scalar_dense", "nonzero", "cudaMemcpy")
    try:
        fn()
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        counts: dict = {}
        for e in prof.events():
            if any(w in e.name for w in waits):
                counts[e.name] = counts.get(e.name, 0) + 1
        return counts
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        log(f"   (profiler failed: {type(exc).__name__}: {str(exc)[:200]})")
        return {}


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def coherent_mask(n: int, h: int, w: int, fraction: float, seed: int = 0) -> torch.Tensor:
    from sparsecascade.bench.timing import coherent_mask as cm

    return cm(n, h, w, fraction, seed=seed, device=DEVICE)


def launchers():
    from sparsecascade.kernels.region_conv.triton_backward import build_input_index, region_conv2d_backward_triton
    from sparsecascade.kernels.region_conv.triton_forward import region_conv2d_forward_triton

    return region_conv2d_forward_triton, region_conv2d_backward_triton, build_input_index


def accuracy(name: str, got: torch.Tensor, torch_val: torch.Tensor, ref: torch.Tensor, atol: float,
             extra_torch: torch.Tensor | None = None) -> dict:
    """The 2x rule on max-norm errors; NaN anywhere in ``got`` where ``ref`` has none fails."""
    got, ref = got.double(), ref.double()
    err = (got - ref).abs().max().item() if got.numel() else 0.0
    terr = (torch_val.double() - ref).abs().max().item() if got.numel() else 0.0
    if extra_torch is not None and got.numel():
        terr = max(terr, (extra_torch.double() - ref).abs().max().item())
    ok = bool(math.isfinite(err) and err <= 2 * terr + atol)
    row = dict(name=name, err=err, torch_err=terr, atol=atol, ratio=err / terr if terr else None, ok=ok)
    log(f"{'ok  ' if ok else 'FAIL'} {name}: err {err:.3e} torch {terr:.3e} atol {atol:.1e}")
    return row


# ----------------------------------------------------------------------------------------------
# correctness at real sizes


def make_case(case, dtype, fraction: float = 0.5, seed: int = 0):
    """x (N,H,W,Ci) NHWC, weight OIHW channels_last (as RegionConv2d holds it) and its (KH,KW,Ci,Co)
    view, mask, idx and fp32 grad rows, on the GPU."""
    from sparsecascade.kernels import ConvGeometry

    name, n, hw, c_in, c_out, (kh, kw), (ph, pw), dil = case
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    geometry = ConvGeometry(hw, hw, kh, kw, ph, pw, dil, dil)
    x = torch.randn(n, hw, hw, c_in, device=DEVICE, generator=gen).to(dtype)
    w = (torch.randn(c_out, c_in, kh, kw, device=DEVICE, generator=gen) / math.sqrt(c_in * kh * kw)).to(dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    mask = coherent_mask(n, geometry.out_height, geometry.out_width, fraction, seed=seed)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    bias = torch.randn(c_out, device=DEVICE, generator=gen) / 4
    grad_rows = torch.randn(idx.numel(), c_out, device=DEVICE, generator=gen)
    return geometry, x, w, mask, idx, bias, grad_rows


def dense_conv(x_nhwc, w_oihw, geometry, dtype=None):
    x = x_nhwc.permute(0, 3, 1, 2)
    w = w_oihw
    if dtype is not None:
        x, w = x.to(dtype), w.to(dtype)
    y = F.conv2d(x, w, padding=(geometry.pad_h, geometry.pad_w), dilation=(geometry.dil_h, geometry.dil_w))
    return y.permute(0, 2, 3, 1)


def check_forward(case, precision: str, results: Results) -> None:
    fwd, _, _ = launchers()
    dtype = DTYPES[precision]
    geometry, x, w, mask, idx, bias, _ = make_case(case, dtype)
    c_out = w.shape[0]
    rows = lambda t: t.reshape(-1, c_out).index_select(0, idx)  # noqa: E731
    with precision_context(precision):
        out = torch.full((x.shape[0], geometry.out_height, geometry.out_width, c_out), float("nan"),
                         dtype=dtype, device=DEVICE)
        fwd(x, w.permute(2, 3, 1, 0), idx, out, geometry, bias=bias, relu=True)
        y_torch = torch.relu(dense_conv(x, w, geometry) + bias.to(dtype))
    ref = torch.relu(dense_conv(x.double(), w.double(), geometry) + bias.double())
    extra = None
    if precision == "tf32":
        extra = torch.relu(dense_conv(tf32_round(x).double(), tf32_round(w).double(), geometry) + bias.double())
        extra = rows(extra)
    untouched = torch.ones(out.shape[:-1].numel(), dtype=torch.bool, device=DEVICE)
    untouched[idx] = False
    written_outside = bool(~torch.isnan(out.reshape(-1, c_out)[untouched]).all())
    scale = rows(ref).abs().max().item()
    atol = {"fp32": 1e-5, "tf32": 1e-4, "bf16": 2**-10, "fp16": 2**-12}[precision] * scale
    row = accuracy(f"forward {case[0]} {precision}", rows(out), rows(y_torch), rows(ref), atol, extra)
    row.update(kind="forward", case=case[0], precision=precision, rows=idx.numel(),
               written_outside_idx=written_outside, ok=row["ok"] and not written_outside)
    results.add(row)


def check_backward(case, precision: str, results: Results) -> None:
    _, bwd, _ = launchers()
    dtype = DTYPES[precision]
    geometry, x, w, mask, idx, _, grad_rows = make_case(case, dtype, seed=1)
    c_out = w.shape[0]
    g_rounded = grad_rows.to(dtype)  # what the launcher and torch in that dtype use
    g_dense = torch.zeros(x.shape[0] * geometry.out_height * geometry.out_width, c_out, device=DEVICE, dtype=dtype)
    g_dense.index_copy_(0, idx, g_rounded)
    g_dense = g_dense.view(x.shape[0], geometry.out_height, geometry.out_width, c_out)

    def torch_grads(xv, wv, gv):
        xv = xv.detach().requires_grad_(True)
        wv = wv.detach().requires_grad_(True)
        y = dense_conv(xv, wv, geometry)
        gx, gw = torch.autograd.grad(y, (xv, wv), gv)
        return gx, gw

    with precision_context(precision):
        gx, gw = bwd(grad_rows, x, w.permute(2, 3, 1, 0), idx, geometry)
        tx, tw = torch_grads(x, w, g_dense)
    rx, rw = torch_grads(x.double(), w.double(), g_dense.double())
    ex = ew = None
    if precision == "tf32":
        ex, ew = torch_grads(tf32_round(x).double(), tf32_round(w).double(), tf32_round(g_dense).double())
    gw_oihw = gw.permute(3, 2, 0, 1)
    for what, got, tv, ref, extra in (("grad_input", gx, tx, rx, ex), ("grad_weight", gw_oihw, tw, rw, ew)):
        scale = ref.abs().max().item()
        atol = {"fp32": 1e-5, "tf32": 1e-4, "bf16": 2**-10, "fp16": 2**-12}[precision] * scale
        row = accuracy(f"{what} {case[0]} {precision}", got, tv, ref, atol, extra)
        row.update(kind=what, case=case[0], precision=precision, rows=idx.numel())
        results.add(row)


def check_nan(results: Results) -> None:
    """A NaN input pixel reaches exactly the active outputs whose receptive field holds it (relu
    keeps it); a NaN grad row reaches exactly the inputs that row's taps read."""
    fwd, bwd, _ = launchers()
    from sparsecascade.kernels import ConvGeometry

    for precision in ("fp32", "bf16"):
        dtype = DTYPES[precision]
        g = ConvGeometry(32, 32, 3, 3, 1, 1)
        gen = torch.Generator(device=DEVICE).manual_seed(5)
        x = torch.randn(2, 32, 32, 64, device=DEVICE, generator=gen).to(dtype)
        x[1, 10, 20, 3] = float("nan")
        w = torch.randn(3, 3, 64, 64, device=DEVICE, generator=gen).to(dtype) / 24
        mask = coherent_mask(2, 32, 32, 0.5, seed=3)
        mask[1, 9:12, 19:22] = True
        idx = mask.reshape(-1).nonzero().squeeze(1)
        out = torch.zeros(2, 32, 32, 64, dtype=dtype, device=DEVICE)
        with tf32_switch(False):
            fwd(x, w, idx, out, g, relu=True)
        ref = torch.relu(dense_conv(x.double(), w.permute(3, 2, 0, 1).double(), g))
        got_nan = torch.isnan(out.reshape(-1, 64)[idx])
        want_nan = torch.isnan(ref.reshape(-1, 64)[idx])
        ok = bool(torch.equal(got_nan, want_nan)) and int(want_nan.any(1).sum()) == 9
        results.add(dict(name=f"nan forward {precision}", kind="nan", precision=precision, ok=ok,
                         nan_rows=int(got_nan.any(1).sum())))
        log(f"{'ok  ' if ok else 'FAIL'} nan forward {precision}: {int(got_nan.any(1).sum())} NaN rows (9 expected)")
        grad_rows = torch.randn(idx.numel(), 64, device=DEVICE, generator=gen)
        grad_rows[idx.numel() // 2, 7] = float("nan")
        gx, gw = bwd(grad_rows, torch.nan_to_num(x), w, idx, g)
        nan_pixels = int(torch.isnan(gx).any(-1).sum())
        center = idx[idx.numel() // 2].item()
        n, rem = divmod(center, 32 * 32)
        oy, ox = divmod(rem, 32)
        expected = sum(1 for dy in (-1, 0, 1) for dx in (-1, 0, 1) if 0 <= oy + dy < 32 and 0 <= ox + dx < 32)
        ok = nan_pixels == expected and bool(torch.isnan(gw).any())
        results.add(dict(name=f"nan backward {precision}", kind="nan", precision=precision, ok=ok,
                         nan_input_pixels=nan_pixels, expected=expected))
        log(f"{'ok  ' if ok else 'FAIL'} nan backward {precision}: {nan_pixels} NaN input pixels ({expected} expected)")


def check_determinism(results: Results) -> None:
    """Two backward runs give identical bits: in deterministic mode (fixed tiles) and autotuned."""
    _, bwd, _ = launchers()
    case = CORRECTNESS_CASES[0]
    for precision in ("bf16", "tf32"):
        dtype = DTYPES[precision]
        geometry, x, w, mask, idx, _, grad_rows = make_case(case, dtype, seed=2)
        wv = w.permute(2, 3, 1, 0)
        for mode in ("deterministic", "default"):
            previous = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(mode == "deterministic")
            try:
                with precision_context(precision):
                    a = bwd(grad_rows, x, wv, idx, geometry)
                    b = bwd(grad_rows, x, wv, idx, geometry)
            finally:
                torch.use_deterministic_algorithms(previous)
            ok = all(torch.equal(p, q) for p, q in zip(a, b))
            results.add(dict(name=f"determinism {precision} {mode}", kind="determinism", ok=ok))
            log(f"{'ok  ' if ok else 'FAIL'} determinism {precision} {mode}")


def cmd_correctness(args) -> int:
    results = Results(args.out, "correctness")
    precisions = args.precisions
    for case in CORRECTNESS_CASES:
        for precision in precisions:
            check_forward(case, precision, results)
            check_backward(case, precision, results)
    check_nan(results)
    check_determinism(results)
    return report(results)


def report(results: Results) -> int:
    failures = results.doc["failures"]
    log(f"{len(results.doc['rows'])} checks, {len(failures)} failed" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------------
# int64 offsets: a tensor over 2^31 elements


def cmd_int64(args) -> int:
    """x (1, 2900, 2900, 256) bf16 = 2.15e9 elements: active pixels in the first and the last image
    rows, so that element offsets past 2^31 are read (x), written (out, grad_x) and gathered
    (grad_weight); checked on crops against F.conv2d in float64."""
    results = Results(args.out, "int64")
    fwd, bwd, _ = launchers()
    from sparsecascade.kernels import ConvGeometry

    h = w_ = INT64_SIZE[0]
    c = INT64_SIZE[1]
    dtype = torch.bfloat16
    g = ConvGeometry(h, w_, 3, 3, 1, 1)
    assert DRY or h * w_ * c > 2**31
    gen = torch.Generator(device=DEVICE).manual_seed(9)
    x = torch.empty(1, h, w_, c, dtype=dtype, device=DEVICE)
    x.normal_(generator=gen)
    weight = (torch.randn(c, c, 3, 3, device=DEVICE, generator=gen) / 48).to(dtype)
    span = min(300, w_ // 2)
    top = torch.arange(0, span, 3, device=DEVICE)  # row 0
    bottom = (h - 1) * w_ + torch.arange(w_ - 2 * span, w_, 2, device=DEVICE)  # the last row, far end
    bottom2 = (h - 2) * w_ + torch.arange(w_ - span, w_, 3, device=DEVICE)
    idx = torch.cat([top, bottom2, bottom]).sort().values
    out = torch.zeros(1, h, w_, c, dtype=dtype, device=DEVICE)
    log(f"x has {x.numel() / 2**31:.3f} x 2^31 elements; last active element offset {(idx[-1].item() + 1) * c:.3e}")
    fwd(x, weight.permute(2, 3, 1, 0), idx, out, g)
    grad_rows = torch.randn(idx.numel(), c, device=DEVICE, generator=gen)
    gx, gw = bwd(grad_rows, x, weight.permute(2, 3, 1, 0), idx, g)
    sync()

    g_dense_rows = {}
    for i, pix in enumerate(idx.tolist()):
        g_dense_rows[pix] = i
    ok_all = True
    gw_ref = torch.zeros(c, c, 3, 3, dtype=torch.float64, device=DEVICE)
    for name, r0, r1 in (("top", 0, 3), ("bottom", h - 4, h)):
        crop = x[:, r0:r1].double().permute(0, 3, 1, 2).detach().requires_grad_(True)
        wd = weight.double().detach().requires_grad_(True)
        pad_top = 1 if r0 == 0 else 0  # a crop that starts inside the image has its real row above
        y = F.conv2d(F.pad(crop, (1, 1, pad_top, 1)), wd)  # rows r0 + 1 - pad_top ... r1 - 1
        first_out = r0 + 1 - pad_top
        sel = idx[(idx // w_ >= first_out) & (idx // w_ < r1)]
        oy, ox = sel // w_, sel % w_
        got_rows = out.view(-1, c)[sel].double()
        ref_rows = y[0, :, oy - first_out, ox].t()
        err = (got_rows - ref_rows).abs().max().item()
        ok = err <= 2**-7 * ref_rows.abs().max().item()
        # backward on the crop: grad rows at sel
        gy = torch.zeros_like(y)
        pos = torch.tensor([g_dense_rows[p] for p in sel.tolist()], device=DEVICE)
        gy[0, :, oy - first_out, ox] = grad_rows[pos].to(dtype).double().t()
        cgx, cgw = torch.autograd.grad(y, (crop, wd), gy)
        gw_ref += cgw
        rows_slice = gx[0, r0 + (0 if r0 == 0 else 1):r1].double()
        ref_gx = cgx[0].permute(1, 2, 0)[(0 if r0 == 0 else 1):]
        gx_err = (rows_slice - ref_gx).abs().max().item()
        ok = ok and gx_err <= 1e-4 * (1 + ref_gx.abs().max().item())
        ok_all &= ok
        results.add(dict(name=f"int64 {name}", kind="int64", rows=int(sel.numel()), forward_err=err,
                         grad_input_err=gx_err, ok=bool(ok)))
        log(f"{'ok  ' if ok else 'FAIL'} int64 {name}: {sel.numel()} rows, forward err {err:.2e}, grad_x err {gx_err:.2e}")
    gw_err = (gw.permute(3, 2, 0, 1).double() - gw_ref).abs().max().item()
    ok = gw_err <= 1e-4 * (1 + gw_ref.abs().max().item())
    middle = gx[0, 5:h - 5]  # rows no active pixel reads
    untouched = middle.numel() == 0 or middle.abs().max().item() == 0.0
    results.add(dict(name="int64 grad_weight", kind="int64", grad_weight_err=gw_err, ok=bool(ok)))
    results.add(dict(name="int64 grad_input zero elsewhere", kind="int64", ok=bool(untouched)))
    log(f"{'ok  ' if ok else 'FAIL'} int64 grad_weight err {gw_err:.2e}; grad_x zero elsewhere: {untouched}")
    return report(results)


# ----------------------------------------------------------------------------------------------
# every autotune config, each in its own worker process (parallel compiles)


def _config_lists(precision: str):
    from sparsecascade.kernels.region_conv import triton_backward as b
    from sparsecascade.kernels.region_conv import triton_forward as f

    cls = "16bit" if precision in ("bf16", "fp16") else precision.replace("fp32", "ieee")
    return cls, {"forward": f.forward_configs(cls), "grad_input": b.grad_input_configs(cls),
                 "grad_weight": b.grad_weight_configs(cls)}


def config_worker(spec: dict) -> list[dict]:
    """Run one case with SPARSECASCADE_TRITON_CONFIG=k (set by the parent): returns accuracy rows."""
    results = Results(None, "configs-worker")
    case = next(c for c in CORRECTNESS_CASES if c[0] == spec["case"])
    check_forward(case, spec["precision"], results)
    check_backward(case, spec["precision"], results)
    for row in results.doc["rows"]:
        row["config_index"] = spec["index"]
    return results.doc["rows"]


def cmd_configs(args) -> int:
    """Every config the autotuner may pick, forward and backward, checked on aligned and unaligned
    cases: config k (of the pruned list) is forced by SPARSECASCADE_TRITON_CONFIG=k in a worker."""
    results = Results(args.out, "configs")
    specs = []
    for precision in args.precisions:
        _, lists = _config_lists(precision)
        count = max(len(v) for v in lists.values())
        for case in args.cases:
            for k in range(count):
                specs.append(dict(case=case, precision=precision, index=k))
    log(f"{len(specs)} (case, precision, config) runs on {args.workers} workers")
    from concurrent.futures import ThreadPoolExecutor

    def run(spec):
        env = dict(os.environ, SPARSECASCADE_TRITON_CONFIG=str(spec["index"]))
        proc = subprocess.run([sys.executable, __file__, "config-worker", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=600)
        return spec, proc

    with ThreadPoolExecutor(args.workers) as pool:
        for spec, proc in pool.map(run, specs):
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
            if proc.returncode != 0 or not lines:
                results.add(dict(name=f"config {spec}", ok=False, error=proc.stderr[-2000:]))
                log(f"FAIL config run {spec}: {proc.stderr[-500:]}")
                continue
            for row in json.loads(lines[-1][5:]):
                results.add(row)
                if not row["ok"]:
                    log(f"FAIL {row['name']} config {spec['index']}")
    return report(results)


# ----------------------------------------------------------------------------------------------
# kernel timing against cuDNN


def prewarm(subcommand: list[str], workers: int, count: int) -> None:
    """Compile every config in parallel: ``count`` worker processes each run the workload once
    with SPARSECASCADE_TRITON_CONFIG=k, filling Triton's on-disk cache; the autotuner in this
    process then benchmarks configs without compiling them one after the other."""
    start = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    def run(k):
        env = dict(os.environ, SPARSECASCADE_TRITON_CONFIG=str(k))
        return subprocess.run([sys.executable, __file__, *subcommand, "--warm-only"], env=env,
                              capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(workers) as pool:
        procs = list(pool.map(run, range(count)))
    bad = [p for p in procs if p.returncode != 0]
    log(f"prewarm: {count} config shards compiled in {time.perf_counter() - start:.1f} s"
        + (f", {len(bad)} failed: {bad[0].stderr[-1500:]}" if bad else ""))


def cmd_kernels(args) -> int:
    from sparsecascade import region_conv2d
    from sparsecascade.kernels import ConvGeometry

    fwd, bwd, build_index = launchers()
    if not args.warm_only and args.prewarm:
        sub = ["kernels", "--dtypes", *args.dtypes, "--batches", *map(str, args.batches),
               "--fractions", *map(str, args.fractions)] + (["--cases", *args.cases] if args.cases else [])
        prewarm(sub, args.workers, 10)
    results = Results(None if args.warm_only else args.out, "kernels")
    torch.backends.cudnn.benchmark = True
    cases = [c for c in TIMING_CASES if args.cases is None or c[0] in args.cases]
    for (name, hw, c_in, c_out, (kh, kw), (ph, pw), dil) in cases:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            with precision_context(dtype_name):
                for batch in args.batches:
                    gen = torch.Generator(device=DEVICE).manual_seed(0)
                    geometry = ConvGeometry(hw, hw, kh, kw, ph, pw, dil, dil)
                    x_cl = torch.randn(batch, c_in, hw, hw, device=DEVICE, generator=gen).to(dtype)
                    x_cl = x_cl.contiguous(memory_format=torch.channels_last)
                    w = (torch.randn(c_out, c_in, kh, kw, device=DEVICE, generator=gen) / math.sqrt(c_in * kh * kw))
                    w = w.to(dtype).contiguous(memory_format=torch.channels_last)
                    x_nhwc, w_view = x_cl.permute(0, 2, 3, 1), w.permute(2, 3, 1, 0)  # views, no copies
                    g_dense = torch.randn(batch, c_out, hw, hw, device=DEVICE, generator=gen).to(dtype)
                    g_dense = g_dense.contiguous(memory_format=torch.channels_last)
                    conv_args = ([1, 1], [ph, pw], [dil, dil], False, [0, 0], 1)
                    dense_fwd = dense_bwd = None
                    if not args.warm_only:
                        dense_fwd = bench_ms(lambda: F.conv2d(x_cl, w, padding=(ph, pw), dilation=dil))
                        dense_bwd = bench_ms(lambda: torch.ops.aten.convolution_backward(
                            g_dense, x_cl, w, None, *conv_args, [True, True, False]))
                    for f in args.fractions:
                        mask = coherent_mask(batch, hw, hw, f, seed=1)
                        idx = mask.reshape(-1).nonzero().squeeze(1)
                        out = torch.zeros(batch, hw, hw, c_out, dtype=dtype, device=DEVICE)
                        grad_rows = g_dense.permute(0, 2, 3, 1).reshape(-1, c_out).index_select(0, idx).float()
                        index = build_index(idx, geometry, batch)
                        xr = x_cl.detach().requires_grad_(True)
                        wr = w.detach().requires_grad_(True)

                        def k_fwd():
                            fwd(x_nhwc, w_view, idx, out, geometry)

                        def k_bwd():
                            bwd(grad_rows, x_nhwc, w_view, idx, geometry, input_index=index)

                        def k_bwd_index():
                            bwd(grad_rows, x_nhwc, w_view, idx, geometry)

                        def op_fwd():
                            region_conv2d(x_cl, w, None, mask, padding=(ph, pw), dilation=dil, backend="triton")

                        def op_fwd_bwd():
                            y = region_conv2d(xr, wr, None, mask, padding=(ph, pw), dilation=dil, backend="triton")
                            torch.autograd.grad(y, (xr, wr), g_dense)

                        for fn in (k_fwd, k_bwd, k_bwd_index, op_fwd, op_fwd_bwd):
                            fn()  # autotune / compile outside the timing
                        sync()
                        if args.warm_only:
                            continue
                        # sanity: the region rows against cuDNN under the 2x rule's loose cousin
                        ref = F.conv2d(x_cl, w, padding=(ph, pw), dilation=dil).permute(0, 2, 3, 1)
                        diff = (out.reshape(-1, c_out)[idx].float() - ref.reshape(-1, c_out)[idx].float()).abs().max().item()
                        row = dict(name=f"{name} {dtype_name} b{batch} f{f}", case=name, dtype=dtype_name, batch=batch,
                                   fraction=f, rows=idx.numel(), dense_fwd_ms=dense_fwd, dense_bwd_ms=dense_bwd,
                                   kernel_fwd_ms=bench_ms(k_fwd), kernel_bwd_ms=bench_ms(k_bwd),
                                   kernel_bwd_with_index_ms=bench_ms(k_bwd_index), op_fwd_ms=bench_ms(op_fwd),
                                   op_fwd_bwd_ms=bench_ms(op_fwd_bwd), max_diff_vs_cudnn=diff)
                        row.update(gpu_kernel_fwd_ms=graph_ms(k_fwd), gpu_kernel_bwd_ms=graph_ms(k_bwd),
                                   gpu_dense_fwd_ms=graph_ms(lambda: F.conv2d(x_cl, w, padding=(ph, pw), dilation=dil)),
                                   gpu_dense_bwd_ms=graph_ms(lambda: torch.ops.aten.convolution_backward(
                                       g_dense, x_cl, w, None, *conv_args, [True, True, False])),
                                   host_kernel_fwd_us=host_us(k_fwd), host_op_fwd_us=host_us(op_fwd))
                        for kind in ("fwd", "bwd"):
                            k, d = row[f"gpu_kernel_{kind}_ms"], row[f"gpu_dense_{kind}_ms"]
                            row[f"gpu_{kind}_vs_dense"] = k / d if k and d else None
                        row["op_bwd_ms"] = row["op_fwd_bwd_ms"] - row["op_fwd_ms"]
                        row["fwd_vs_dense"] = row["kernel_fwd_ms"] / dense_fwd
                        row["bwd_vs_dense"] = row["kernel_bwd_with_index_ms"] / dense_bwd
                        row["op_fwd_vs_dense"] = row["op_fwd_ms"] / dense_fwd
                        row["op_bwd_vs_dense"] = row["op_bwd_ms"] / dense_bwd
                        results.add(row)
                        log(f"{row['name']:>36}: rows {idx.numel():6d} | fwd kernel {row['kernel_fwd_ms']:.3f} op "
                            f"{row['op_fwd_ms']:.3f} cuDNN {dense_fwd:.3f} ms ({row['fwd_vs_dense']:.2f}x) | bwd kernel "
                            f"{row['kernel_bwd_with_index_ms']:.3f} (index prebuilt {row['kernel_bwd_ms']:.3f}) op "
                            f"{row['op_bwd_ms']:.3f} cuDNN {dense_bwd:.3f} ms ({row['bwd_vs_dense']:.2f}x) | diff {diff:.2e}")
                        log(f"{'':>36}  GPU alone (CUDA graph): fwd {_fmt(row['gpu_kernel_fwd_ms'])} vs cuDNN "
                            f"{_fmt(row['gpu_dense_fwd_ms'])} ms ({_fmt(row['gpu_fwd_vs_dense'], 2)}x) | bwd "
                            f"{_fmt(row['gpu_kernel_bwd_ms'])} vs {_fmt(row['gpu_dense_bwd_ms'])} ms "
                            f"({_fmt(row['gpu_bwd_vs_dense'], 2)}x) | host per call: kernel "
                            f"{row['host_kernel_fwd_us']:.0f} us, op {row['host_op_fwd_us']:.0f} us")
    if args.warm_only:
        return 0
    targets(results)
    return 0


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def targets(results: Results) -> None:
    """The issue's targets, read off the rows: forward at f=0.5 <= 0.65x cuDNN in bf16 at batch 4
    (3x3 256->256, 64x64); backward at f=0.5 <= 0.8x dense backward."""
    for row in results.doc["rows"]:
        if row.get("case") == "3x3 256->256 64x64" and row.get("fraction") == 0.5 and row.get("batch") == 4:
            gpu_fwd, gpu_bwd = row.get("gpu_fwd_vs_dense"), row.get("gpu_bwd_vs_dense")
            if row["dtype"] == "bf16":
                results.doc["target_forward_bf16_b4_f05"] = dict(ratio=row["fwd_vs_dense"], target=0.65,
                                                                 met=row["fwd_vs_dense"] <= 0.65,
                                                                 gpu_alone_ratio=gpu_fwd)
            results.doc[f"target_backward_{row['dtype']}_b4_f05"] = dict(ratio=row["bwd_vs_dense"], target=0.8,
                                                                         met=row["bwd_vs_dense"] <= 0.8,
                                                                         gpu_alone_ratio=gpu_bwd)
    results.flush()
    for k, v in results.doc.items():
        if k.startswith("target_"):
            log(f"{k}: {v}")


def cmd_threshold(args) -> int:
    """The confidence threshold in microseconds: the op, the raw Triton launcher, and a torch
    expression of the same decision (softmax, max, compare, compaction), at 64x64 (the output
    stride 8 map of a 512x512 image), batch 1 and 8, 21 and 150 classes."""
    from sparsecascade import confidence_threshold
    from sparsecascade.kernels.confidence.triton_kernel import confidence_threshold_forward_triton

    results = Results(args.out, "threshold")
    hw = 8 if DRY else 64
    for dtype_name in ("bf16", "fp32"):
        dtype = DTYPES[dtype_name]
        for batch in (1, 8):
            for classes in (21, 150):
                logits = torch.randn(batch, classes, hw, hw, device=DEVICE, dtype=dtype) * 3
                logits = logits.contiguous(memory_format=torch.channels_last)
                rows = logits.permute(0, 2, 3, 1).reshape(-1, classes)
                for active_f in (None, 0.5):
                    active = None if active_f is None else coherent_mask(batch, hw, hw, active_f)
                    flat = None if active is None else active.reshape(-1)

                    def op():
                        confidence_threshold(logits, 0.985, active, backend="triton")

                    def kernel():
                        confidence_threshold_forward_triton(rows, 0.985, flat)

                    def torch_expr():
                        conf = torch.softmax(logits.float(), 1).amax(1)
                        stop = conf >= 0.985 if active is None else (conf >= 0.985) & active
                        return stop.reshape(-1).nonzero()

                    op(), kernel(), torch_expr()
                    row = dict(name=f"threshold {dtype_name} b{batch} C{classes} active {active_f}", dtype=dtype_name,
                               batch=batch, classes=classes, active=active_f,
                               op_us=1e3 * bench_ms(op), kernel_us=1e3 * bench_ms(kernel),
                               torch_us=1e3 * bench_ms(torch_expr))
                    results.add(row)
                    log(f"{row['name']:>42}: op {row['op_us']:.1f} us, kernel {row['kernel_us']:.1f} us, "
                        f"torch {row['torch_us']:.1f} us")
    return 0


# ----------------------------------------------------------------------------------------------
# host time: where the launch path spends it


def _profile_top(fn, calls: int, top: int = 25) -> list[tuple[str, int, float, float]]:
    """cProfile ``calls`` calls of ``fn`` (warm): (function, calls, own us per call of fn, cumulative
    us per call of fn), the ``top`` largest own times."""
    import cProfile
    import pstats

    fn()
    sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    stats = pstats.Stats(prof).stats
    rows = [(f"{Path(f).name}:{line}({name})", nc, 1e6 * tt / calls, 1e6 * ct / calls)
            for (f, line, name), (_, nc, tt, ct, _) in stats.items()]
    return sorted(rows, key=lambda r: -r[2])[:top]


def cmd_host(args) -> int:
    """cProfile of the host side: one forward kernel launch (the target layer, bf16, batch 4, f = 0.5),
    the op with a prebuilt RegionIndex, and one LC forward of ``--model`` at batch 8 (paper stops)."""
    from sparsecascade import create_model
    from sparsecascade.bench.forced_stops import force_stop_fractions
    from sparsecascade.kernels import ConvGeometry
    from sparsecascade.ops.region_conv import run_region_conv
    from sparsecascade.ops.region_index import RegionIndex

    results = Results(args.out, "host")
    fwd, _, _ = launchers()
    hw, c = (6, 16) if DRY else (64, 256)
    dtype = torch.bfloat16
    g = ConvGeometry(hw, hw, 3, 3, 1, 1)
    x_cl = torch.randn(4, c, hw, hw, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3, device=DEVICE) / 48).to(dtype).contiguous(memory_format=torch.channels_last)
    index = RegionIndex(coherent_mask(4, hw, hw, 0.5))
    out = torch.zeros(4, hw, hw, c, dtype=dtype, device=DEVICE)
    scale, shift = torch.ones(c, device=DEVICE), torch.zeros(c, device=DEVICE)
    backend = "auto" if DRY else "triton"
    cases = {  # name: (the call, calls profiled)
        "kernel launch": (lambda: fwd(x_cl.permute(0, 2, 3, 1), w.permute(2, 3, 1, 0), index.rows, out, g), 200),
        "op, prebuilt index, BN epilogue": (lambda: run_region_conv(x_cl, w, None, index, g, backend, scale=scale,
                                                                    shift=shift, relu=True), 200),
    }
    model = create_model(args.model, num_classes=21).eval().to(DEVICE, dtype)
    model = model.to(memory_format=torch.channels_last).set_backend(backend)
    size = 64 if DRY else 512
    xm = torch.randn(8, 3, size, size, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)

    def lc_forward():
        model.rho = 1.0
        force_stop_fractions(model, list(PAPER_STOPS))
        with torch.no_grad():
            model(xm)

    xr, wr = x_cl.detach().requires_grad_(True), w.detach().requires_grad_(True)
    gy = torch.randn_like(x_cl)

    def op_forward_backward():  # through autograd: what a training step pays per region layer
        y = run_region_conv(xr, wr, None, index, g, backend, scale=scale, shift=shift, relu=True)
        torch.autograd.grad(y, (xr, wr), gy)

    cases["op forward + backward, prebuilt index, autograd"] = (op_forward_backward, 50)
    cases[f"{args.model} b8 LC forward"] = (lc_forward, 3)
    # Timings first: once the CUDA profiler (CUPTI) has been attached, every later launch in the
    # process pays for its callbacks (measured: the op's host time 99 -> 227 us).
    timed = {name: (host_us(fn, calls=calls), bench_ms(fn)) for name, (fn, calls) in cases.items()}
    for name, (fn, calls) in cases.items():
        rows = _profile_top(fn, calls)
        total, wall = timed[name]
        gpu, top = profiled_gpu_ms(fn)
        syncs = sync_points(fn)
        results.add(dict(name=name, host_us_per_call=total, wall_ms=wall, gpu_busy_ms=gpu, top_kernels_ms=top,
                         sync_points=syncs, top=rows))
        log(f"== {name}: wall {wall:.3f} ms, GPU busy {_fmt(gpu)} ms, host points that wait for the GPU {syncs}")
        for kname, ms in top:
            log(f"   {ms:9.4f} ms  {kname}")
        log(f"== {name}: {total:.0f} us of host time per call; own time per call, largest first:")
        for fname, nc, own, cum in rows:
            log(f"   {own:9.1f} us own {cum:9.1f} us cum {nc / calls:7.1f} calls  {fname}")
    return 0


# ----------------------------------------------------------------------------------------------
# end to end


def cmd_e2e(args) -> int:
    """``model`` at 512x512: the dense network (rho = 1: nothing stops, so every stage runs densely
    on cuDNN, as LayerCascade does when no pixel stopped) against LC at the paper's stop shares
    (23% / 29%, imposed by sparsecascade.bench.forced_stops, the region kernels on the remaining pixels); the
    first call of each (Triton compilation and autotuning for LC) timed apart."""
    from sparsecascade import create_model
    from sparsecascade.bench.forced_stops import force_stop_fractions
    from sparsecascade.ops import dense_fallback_fraction

    dtype = DTYPES[args.dtype]
    if not args.warm_only and args.prewarm:
        prewarm(["e2e", "--model", args.model, "--dtype", args.dtype, "--size", str(args.size),
                 "--batches", str(min(args.batches))], args.workers, 10)
    results = Results(None if args.warm_only else args.out, f"e2e {args.model}")
    torch.backends.cudnn.benchmark = True
    model = create_model(args.model, num_classes=21).eval().to(DEVICE, dtype)
    model = model.to(memory_format=torch.channels_last)
    # (stop shares, backend): LC on the Triton kernels alone, and as "auto" runs it (the Triton kernels
    # below the dense-fallback crossover this process measures for the dtype, cuDNN and the mask above it)
    lc_backend = "auto" if DRY else "triton"
    modes = {"dense_rho1": (None, lc_backend), "lc_paper_stops": (list(PAPER_STOPS), lc_backend),
             "lc_paper_stops_auto": (list(PAPER_STOPS), "auto")}
    runs = {}  # (batch, mode) -> (the call, its first-call seconds, ms, output)
    with precision_context(args.dtype), torch.no_grad():
        # Every timing before any profiling: once the CUDA profiler (CUPTI) has been attached, each
        # later launch in the process pays for its callbacks, and LC issues many more launches than
        # the dense network (measured on an H100: lc_resnet50's LC forward at batch 8, 12.5 ms timed before, 13.3 ms after).
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size, device=DEVICE).to(dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            for mode, (stops, backend) in modes.items():
                if args.warm_only and stops is None:
                    continue

                def run(stops=stops, x=x, backend=backend):
                    model.set_backend(backend)
                    model.rho = 1.0
                    force_stop_fractions(model, stops)
                    return model(x)

                sync()
                start = time.perf_counter()
                out = run()
                sync()
                first_s = time.perf_counter() - start
                if not args.warm_only:
                    runs[batch, mode] = (run, first_s, bench_ms(run, rep=500), out)
        for batch in args.batches:
            timings = {}
            for mode in modes:
                if (batch, mode) not in runs:
                    continue
                run, first_s, ms, out = runs[batch, mode]
                gpu_busy, top = profiled_gpu_ms(run)
                timings[mode] = (ms, out)
                row = dict(name=f"{args.model} {args.size} b{batch} {args.dtype} {mode}", model=args.model,
                           size=args.size, batch=batch, dtype=args.dtype, mode=mode, first_call_s=round(first_s, 2),
                           ms=ms, macs=int(out.macs), dense_macs=int(out.dense_macs),
                           stop_fractions=[round(float(s), 4) for s in out.stop_fractions],
                           gpu_busy_ms=gpu_busy, top_kernels_ms=top)
                results.add(row)
                log(f"{row['name']:>45}: first call {first_s:7.2f} s, then {ms:8.2f} ms; MACs {out.macs / 1e9:.1f} G "
                    f"of {out.dense_macs / 1e9:.1f} G; stops {row['stop_fractions']}; GPU busy {_fmt(gpu_busy, 2)} ms")
                for name, k_ms in top:
                    log(f"{'':>50}{k_ms:8.3f} ms  {name}")
            for mode in ("lc_paper_stops", "lc_paper_stops_auto"):
                if not {"dense_rho1", "lc_paper_stops", mode} <= set(timings):
                    continue
                (dense_ms, dense_out), (lc_ms, _) = timings["dense_rho1"], timings[mode]
                # the stop shares' bound: the MACs of the region kernels alone (a dense fallback executes more)
                bound = dense_out.macs / timings["lc_paper_stops"][1].macs
                summary = dict(name=f"{args.model} b{batch} speed-up ({mode})", model=args.model, batch=batch,
                               mode=mode, speedup=dense_ms / lc_ms, mac_bound=bound,
                               share_of_bound=dense_ms / lc_ms / bound, target=1.3 if batch == 8 else None)
                if mode.endswith("auto"):
                    summary["dense_fallback_fraction"] = dense_fallback_fraction(torch.device(DEVICE), dtype)
                if batch == 8:
                    summary["target_met"] = summary["speedup"] >= 1.3
                results.add(summary)
                log(f"{args.model} b{batch} {mode}: LC {summary['speedup']:.2f}x over dense (MAC bound {bound:.2f}x)"
                    + (f", dense fallback above {summary['dense_fallback_fraction']:.2f} active"
                       if "dense_fallback_fraction" in summary else ""))
    return 0


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     epilog="Usually run through benchmarks/gpu/validate.sh partN.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, out=True):
        if out:
            p.add_argument("--out", help="JSON file for the results (rewritten after every row)")
        p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                       help="parallel processes for compiling configs")
        return p

    p = common(sub.add_parser("correctness", help="real sizes, 4 precisions, forward + backward, NaN, determinism"))
    p.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16", "fp16"], choices=list(DTYPES))
    common(sub.add_parser("int64", help="a tensor over 2^31 elements (~18 GB of GPU memory)"))
    p = common(sub.add_parser("configs", help="every autotune config, forward + backward, in worker processes"))
    p.add_argument("--precisions", nargs="+", default=["bf16", "tf32"], choices=list(DTYPES))
    p.add_argument("--cases", nargs="+", default=[CORRECTNESS_CASES[0][0], CORRECTNESS_CASES[3][0],
                                                  CORRECTNESS_CASES[4][0]])
    p = sub.add_parser("config-worker")  # internal: one (case, precision, config) run of `configs`
    p.add_argument("spec")
    p = common(sub.add_parser("kernels", help="kernel and op time against cuDNN over the active fraction"))
    p.add_argument("--dtypes", nargs="+", default=["bf16", "tf32"], choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in TIMING_CASES], help="default: all")
    p.add_argument("--no-prewarm", dest="prewarm", action="store_false")
    p.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    common(sub.add_parser("threshold", help="the confidence threshold op in microseconds"))
    p = common(sub.add_parser("host", help="cProfile of the host side: a kernel launch, the op, an LC forward"))
    p.add_argument("--model", default="lc_resnet50")
    p = common(sub.add_parser("e2e", help="end to end, LC at the paper's stop shares against dense"))
    p.add_argument("--model", default="lc_resnet50")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--no-prewarm", dest="prewarm", action="store_false")
    p.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "config-worker":
        print("ROWS " + json.dumps(config_worker(json.loads(args.spec)), default=str), flush=True)
        return 0
    if not DRY and not torch.cuda.is_available():
        print("validate.py needs a CUDA GPU (or SPARSECASCADE_VALIDATE_DRY=1 TRITON_INTERPRET=1 for a dry run)",
              file=sys.stderr)
        return 2
    log(json.dumps(environment()))
    handler = {"correctness": cmd_correctness, "int64": cmd_int64, "configs": cmd_configs, "kernels": cmd_kernels,
               "threshold": cmd_threshold, "e2e": cmd_e2e, "host": cmd_host}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
