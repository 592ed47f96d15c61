"""Ahead-of-time compile check: every Triton kernel, every config, for real NVIDIA targets.

Runs without a GPU (Triton lowers to PTX and calls ptxas for the cubin), so a CPU machine can
prove that the kernels compile for sm_80 and sm_90 in fp32 (TF32 and exact) / fp16 / bf16, with
the tile shapes, warps and stages the autotuner would try, and read what they compiled to:
whether the PTX has tensor-core instructions (``mma`` on sm_80, ``wgmma`` or ``mma`` on sm_90),
and the registers and spills ``ptxas -v`` reports. Must run with TRITON_INTERPRET unset (the
interpreter swaps the config lists for a single one):

    python -m sparsecascade.kernels._aot_check [--report DIR] [--subset ci] [--jobs N]

``--report DIR`` writes ``DIR/report.json``: one object per compiled kernel and config,
``{"kernel", "dtype", "arch", "config", "tf32", "mma", "spill_bytes", "registers", ...}``.
``--subset ci`` compiles, per region-conv kernel, dtype (fp32 as TF32) and arch, the config with
the highest register pressure (the one most likely to spill), plus the confidence kernels: the
test suite's share; the default is the full matrix (every config in every channel variant).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

ARCHS = (80, 90)
DTYPES = ("fp32", "fp16", "bf16")
REGION_KERNELS = ("forward", "grad_input", "grad_weight")
KERNEL_SIZES = [(3, 3), (1, 1), (1, 7), (5, 5)]


@dataclass(frozen=True)
class Job:
    """One compilation: kernel (by module attribute), pointer/scalar types, constexprs, launch options."""

    module: str
    kernel: str
    types: tuple[tuple[str, str], ...]  # non-constexpr args -> Triton type ('*fp16', 'i32', ...)
    constexprs: tuple[tuple[str, object], ...]
    aligned_ints: tuple[str, ...]  # int args specialised as multiples of 16, as the runtime does
    num_warps: int
    num_stages: int
    arch: int
    label: str = field(default="")
    # report fields
    name: str = ""  # forward / grad_input / grad_weight / input_map / confidence / compact
    dtype: str = ""
    tf32: bool = False
    config: tuple[tuple[str, object], ...] = ()
    maxnreg: int | None = None  # the config's register limit (.maxnreg)


def _alignment_attrs(fn, types: dict[str, str], aligned_ints: tuple[str, ...]) -> dict:
    """The divisibility the runtime would specialise on: pointers of torch allocations are
    16-byte aligned; ints that are multiples of 16 (channel counts) enable vector loads and
    cp.async pipelining, a different code path from the unaligned one."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if types.get(name, "").startswith("*") or name in aligned_ints
    }


_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# tensor-core instructions: mma.sync (sm_80+) and wgmma.mma_async (sm_90a)
_MMA = re.compile(r"^\s*(?:@%p\d+\s+)?(wgmma\.mma_async|mma\.sync)\S*", re.MULTILINE)


def parse_ptxas_log(log: str) -> dict:
    """registers, spill stores/loads and stack frame from ``ptxas -v`` output (one kernel)."""
    regs = _REGS.search(log)
    spills = _SPILLS.search(log)
    stores = int(spills.group(2)) if spills else 0
    loads = int(spills.group(3)) if spills else 0
    return dict(
        registers=int(regs.group(1)) if regs else None,
        spill_bytes=stores + loads, spill_stores=stores, spill_loads=loads,
        stack_bytes=int(spills.group(1)) if spills else 0,
    )


def _ptxas_log(ptx: str, arch: int) -> str:
    """Run ptxas -v on ``ptx`` the way Triton does (same binary and flags), return its log."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(Path(tmp) / "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return proc.stdout + proc.stderr


def compile_job(job: Job) -> dict:
    """Compile one job; returns its report row (``error`` set on failure)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    start = time.perf_counter()
    row = dict(kernel=job.name, dtype=job.dtype, arch=f"sm_{job.arch}", config=dict(job.config), tf32=job.tf32,
               mma=None, spill_bytes=None, registers=None, label=job.label, error=None)
    try:
        fn = getattr(importlib.import_module(job.module), job.kernel)
        types = dict(job.types)
        constexprs = dict(job.constexprs)
        signature = {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}
        src = triton.compiler.ASTSource(
            fn=fn, signature=signature, constexprs=constexprs, attrs=_alignment_attrs(fn, types, job.aligned_ints),
        )
        # ptxas -v output: Triton prints it when asked (a fresh compile); a cache hit runs ptxas again
        previous = triton.knobs.nvidia.dump_ptxas_log
        triton.knobs.nvidia.dump_ptxas_log = True
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                compiled = triton.compile(
                    src, target=GPUTarget("cuda", job.arch, 32),
                    options={"num_warps": job.num_warps, "num_stages": job.num_stages, "maxnreg": job.maxnreg},
                )
        finally:
            triton.knobs.nvidia.dump_ptxas_log = previous
        missing = [k for k in ("ptx", "cubin") if not compiled.asm.get(k)]
        if missing:
            row["error"] = f"missing {missing}"
        else:
            ptx = compiled.asm["ptx"]
            log = captured.getvalue()
            if "registers" not in log:
                log = _ptxas_log(ptx, job.arch)
            row.update(parse_ptxas_log(log))
            kinds = sorted({m.group(1) for m in _MMA.finditer(ptx)})
            row.update(mma=bool(kinds), mma_kinds=kinds, shared_bytes=int(compiled.metadata.shared),
                       fma_count=len(re.findall(r"\bfma\.rn\.f32\b", ptx)))
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _scalars(names: list[str], floats: tuple[str, ...] = ()) -> dict[str, str]:
    return {n: ("fp32" if n in floats else "i32") for n in names}


CONV_INTS = ["H", "W", "H_out", "W_out", "C_in", "C_out", "pad_h", "pad_w", "dil_h", "dil_w"]
WEIGHT_STRIDES = ["stride_wh", "stride_ww", "stride_wi", "stride_wo"]


def _weight_layout(layout: str) -> tuple[dict, tuple[str, ...]]:
    """The weight-stride specialisation of a layout: ints equal to 1 become constexprs (as the
    runtime specialises them); the others are multiples of 16 for aligned channels.
    "khwc": a contiguous (KH, KW, C_in, C_out) weight (C_out stride 1); "oihw_cl": the permuted
    view of a channels_last (C_out, C_in, KH, KW) weight (C_in stride 1)."""
    if layout == "khwc":
        return {"stride_wo": 1}, ("stride_wh", "stride_ww", "stride_wi")
    return {"stride_wi": 1}, ("stride_wh", "stride_ww", "stride_wo")


def _precisions(dt: str) -> list[str]:
    return ["16bit"] if dt != "fp32" else ["tf32", "ieee"]


def _pressure(cfg, names) -> float:
    """Registers a config needs per thread, roughly: fp32 accumulators plus operand elements
    loaded per K step (names: (M, N, K) block names)."""
    m, n, k = (cfg.kwargs[x] for x in names)
    return (m * n + m * k + k * n) / (32 * cfg.num_warps)


# Channel-alignment variants of a region-conv kernel: "even": channel counts that are multiples
# of 16 and of the blocks (EVEN_* full-tile path, every real backbone layer with power-of-two
# widths); "aligned": multiples of 16 but not of the blocks (masked vector loads: IRNet's 1088,
# 160, 192 channels); "unaligned": element-wise loads (a 21-class head), compiled only for the
# configs the pruner allows there.
VARIANTS = ("even", "aligned", "unaligned")


ONES = ("H", "W", "H_out", "W_out", "C_in", "C_out", "dil_h", "dil_w", "ROWS_PER_SPLIT")


def _ones_variant(job: Job) -> Job:
    """``job`` for a 1x1 kernel on a 1x1 image with one channel in and out: Triton turns every int
    argument equal to 1 into a constexpr, so ``(KH * KW * C_in).to(...)`` is then ``int.to`` and fails
    to compile (seen on an H200; the interpreter and the other variants never specialise them)."""
    types, cx = dict(job.types), dict(job.constexprs)
    for name in ONES:
        if name in types:
            del types[name]
            cx[name] = 1
    cx.update(KH=1, KW=1)
    if "POINTWISE" in cx:  # a 1x1 kernel: the launcher passes idx as the (unused) map
        cx["POINTWISE"] = True
        types["pos_ptr"] = "*i64"
    config = {**dict(job.config), "variant": "ones", "kernel": "1x1"}
    label = f"{job.name} sm{job.arch} {job.dtype}{'-tf32' if job.tf32 else ''} " + " ".join(
        f"{k}={v}" for k, v in config.items())
    return replace(job, types=tuple(types.items()), constexprs=tuple(cx.items()), aligned_ints=(),
                   label=label, config=tuple(config.items()))


def build_jobs(subset: str = "full", archs=ARCHS, dtypes=DTYPES) -> list[Job]:
    """The compile matrix. ``full``: every region-conv kernel x precision class x config x channel
    variant x arch; kernel sizes, epilogue flags and weight layouts rotate over the configs.
    ``ci``: per kernel, dtype and arch the config with the highest register pressure, in one
    variant (rotating with the dtype), plus the unaligned variant in bf16; fp32 as TF32 only.
    Confidence kernels: every config."""
    from .confidence import triton_kernel as conf
    from .region_conv import triton_backward as bwd
    from .region_conv import triton_forward as fwd

    jobs: list[Job] = []

    def add(module, kernel, types, constexprs, warps, stages, arch, *, name, dtype="", tf32=False,
            config=None, aligned=(), maxnreg=None):
        config = dict(config or {})
        config.update(num_warps=warps, num_stages=stages)
        if maxnreg is not None:
            config["maxnreg"] = maxnreg
        label = f"{name} sm{arch} {dtype}{'-tf32' if tf32 else ''} " + " ".join(f"{k}={v}" for k, v in config.items())
        jobs.append(Job(module.__name__, kernel, tuple(types.items()), tuple(constexprs.items()), tuple(aligned),
                        warps, stages, arch, label, name, dtype, tf32, tuple(config.items()), maxnreg))

    def plan(configs, names, unaligned, dt, precision):
        """(index, config, variant) triples to compile."""
        allowed = {tuple(t) for t in unaligned[precision]}
        triples = []
        for i, cfg in enumerate(configs):
            for variant in VARIANTS:
                if variant == "unaligned" and (*(cfg.kwargs[n] for n in names), cfg.num_warps, cfg.num_stages) not in allowed:
                    continue
                triples.append((i, cfg, variant))
        if subset != "ci":
            return triples
        rotation = {"fp16": "even", "bf16": "aligned", "fp32": "aligned"}[dt]
        wanted = [rotation] + (["unaligned"] if dt == "bf16" else [])
        picked = []
        for variant in wanted:
            pool = [t for t in triples if t[2] == variant]
            picked.append(max(pool, key=lambda t: (_pressure(t[1], names), -t[0])))
        return picked

    def variant_args(variant, extra_aligned=()):
        even = variant == "even"
        aligned = ("C_in", "C_out") + tuple(extra_aligned) if variant != "unaligned" else ()
        return even, aligned

    for arch in archs:
        for dt in dtypes:
            precisions = _precisions(dt)
            if subset == "ci" and dt == "fp32":
                precisions = ["tf32"]
            for precision in precisions:
                tf32 = precision == "tf32"
                prec = "tf32" if tf32 else "ieee"
                # forward
                for i, cfg, variant in plan(fwd.forward_configs(precision), (fwd.NAMES[0], fwd.NAMES[1], fwd.NAMES[2]),
                                            fwd.FORWARD_UNALIGNED_TILES, dt, precision):
                    kh, kw = KERNEL_SIZES[i % len(KERNEL_SIZES)]
                    layout = "khwc" if (i + VARIANTS.index(variant)) % 2 else "oihw_cl"
                    w_cx, w_aligned = _weight_layout(layout)
                    even, aligned = variant_args(variant, w_aligned)
                    # rotate the epilogue: the fullest one the launcher passes (it folds a bias into
                    # the shift when both are given), a bias alone, or a bare conv
                    epilogue = ("scale_shift_residual_relu", "bias_relu", "none")[(i + VARIANTS.index(variant)) % 3]
                    types = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "idx_ptr": "*i64", "out_ptr": f"*{dt}",
                             "bias_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32", "res_ptr": f"*{dt}",
                             **_scalars(["P"] + CONV_INTS + WEIGHT_STRIDES + ["res_scale", "P_BUCKET"],
                                        floats=("res_scale",))}
                    for k in w_cx:
                        types.pop(k)
                    cx = {"KH": kh, "KW": kw, "HAS_BIAS": "bias" in epilogue, "HAS_SCALE": "scale" in epilogue,
                          "HAS_SHIFT": "shift" in epilogue, "HAS_RESIDUAL": "residual" in epilogue,
                          "RELU": "relu" in epilogue, "DOT_PRECISION": prec, "DOT_FP32": False,
                          "EVEN_CI": even, "EVEN_CO": even, **w_cx, **cfg.kwargs}
                    add(fwd, "region_conv2d_fwd_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                        name="forward", dtype=dt, tf32=tf32, aligned=aligned, maxnreg=cfg.maxnreg,
                        config={**cfg.kwargs, "variant": variant, "kernel": f"{kh}x{kw}", "weight": layout,
                                "epilogue": epilogue})
                # grad-input (gather): M = rows, N = C_in, K = C_out
                for i, cfg, variant in plan(bwd.grad_input_configs(precision), ("BLOCK_M", "BLOCK_CI", "BLOCK_CO"),
                                            bwd.GRAD_INPUT_UNALIGNED_TILES, dt, precision):
                    kh, kw = KERNEL_SIZES[(i + 1) % len(KERNEL_SIZES)]
                    layout = "khwc" if (i + VARIANTS.index(variant)) % 2 else "oihw_cl"
                    w_cx, w_aligned = _weight_layout(layout)
                    even, aligned = variant_args(variant, w_aligned)
                    pointwise = (kh, kw) == (1, 1)  # the launcher passes idx as the (unused) map
                    types = {"g_ptr": f"*{dt}", "w_ptr": f"*{dt}", "rows_ptr": "*i64",
                             "pos_ptr": "*i64" if pointwise else "*i32",
                             "gx_ptr": "*fp32", **_scalars(["M"] + CONV_INTS + WEIGHT_STRIDES + ["P_BUCKET"])}
                    for k in w_cx:
                        types.pop(k)
                    cx = {"KH": kh, "KW": kw, "POINTWISE": pointwise, "DOT_PRECISION": prec, "DOT_FP32": False,
                          "EVEN_CI": even, "EVEN_CO": even, **w_cx, **cfg.kwargs}
                    add(bwd, "region_conv2d_bwd_input_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                        name="grad_input", dtype=dt, tf32=tf32, aligned=aligned, maxnreg=cfg.maxnreg,
                        config={**cfg.kwargs, "variant": variant, "kernel": f"{kh}x{kw}", "weight": layout,
                                "pointwise": pointwise})
                # grad-weight: M = C_in, N = C_out, K = rows
                for i, cfg, variant in plan(bwd.grad_weight_configs(precision), bwd.WEIGHT_NAMES,
                                            bwd.GRAD_WEIGHT_UNALIGNED_TILES, dt, precision):
                    kh, kw = KERNEL_SIZES[(i + 2) % len(KERNEL_SIZES)]
                    even, aligned = variant_args(variant)
                    types = {"x_ptr": f"*{dt}", "g_ptr": f"*{dt}", "idx_ptr": "*i64", "gw_ptr": "*fp32",
                             **_scalars(["P"] + CONV_INTS + ["ROWS_PER_SPLIT", "P_BUCKET"])}
                    cx = {"KH": kh, "KW": kw, "DOT_PRECISION": prec, "DOT_FP32": False,
                          "EVEN_CI": even, "EVEN_CO": even, **cfg.kwargs}
                    add(bwd, "region_conv2d_bwd_weight_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                        name="grad_weight", dtype=dt, tf32=tf32, aligned=aligned, maxnreg=cfg.maxnreg,
                        config={**cfg.kwargs, "variant": variant, "kernel": f"{kh}x{kw}"})
            # confidence threshold: memory bound, no dot
            for i, (block_m, block_c, warps) in enumerate(conf.confidence_configs()):
                types = {"logits_ptr": f"*{dt}", "active_ptr": "*u8", "labels_ptr": "*i64", "conf_ptr": "*fp32",
                         "stop_ptr": "*u8", "next_ptr": "*u8", "count_ptr": "*i32",
                         **_scalars(["M", "C", "stride_m", "rho"], floats=("rho",))}
                cx = {"HAS_ACTIVE": i % 2 == 0, "BLOCK_M": block_m, "BLOCK_C": block_c}
                add(conf, "confidence_rows_kernel", types, cx, warps, 3, arch, name="confidence", dtype=dt,
                    config={"BLOCK_M": block_m, "BLOCK_C": block_c}, aligned=("C", "stride_m") if i % 2 else ())
        # kernels without float operands: once per config and arch
        for block_m, _, warps in conf.confidence_configs():
            types = {"next_ptr": "*u8", "offset_ptr": "*i64", "out_ptr": "*i64", "M": "i32"}
            add(conf, "compact_rows_kernel", types, {"BLOCK_M": block_m}, warps, 3, arch, name="compact",
                config={"BLOCK_M": block_m})
        # a 1x1 image with one channel: every int equal to 1 is a constexpr at run time
        region = [j for j in jobs if j.arch == arch and j.name in REGION_KERNELS and dict(j.config)["variant"] == "unaligned"]
        for name in REGION_KERNELS:
            first = next((j for j in region if j.name == name), None)
            if first is not None:
                jobs.append(_ones_variant(first))
        for kh, kw in KERNEL_SIZES[:2]:
            types = {"idx_ptr": "*i64", "pos_ptr": "*i32", "touched_ptr": "*i8",
                     **_scalars(["P", "H", "W", "H_out", "W_out", "pad_h", "pad_w", "dil_h", "dil_w"])}
            add(bwd, "region_conv2d_input_map_kernel", types, {"KH": kh, "KW": kw, "BLOCK": bwd.MAP_BLOCK}, 4, 1,
                arch, name="input_map", config={"BLOCK": bwd.MAP_BLOCK, "kernel": f"{kh}x{kw}"})
    return jobs


def summarize(rows: list[dict]) -> str:
    """One line per (kernel, dtype/precision, arch): configs, mma, max registers, max spills."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        prec = r["dtype"] + ("-tf32" if r["tf32"] else ("-ieee" if r["dtype"] == "fp32" and r["kernel"] in REGION_KERNELS else ""))
        groups.setdefault((r["kernel"], prec, r["arch"]), []).append(r)
    lines = [f"{'kernel':<12} {'dtype':<10} {'arch':<6} {'n':>3} {'mma':<5} {'regs':>5} {'spill':>6} {'smem KB':>8}"]
    for (kernel, prec, arch), rs in sorted(groups.items()):
        ok = [r for r in rs if r["error"] is None]
        mma = "all" if ok and all(r["mma"] for r in ok) else ("none" if not any(r["mma"] for r in ok) else "some")
        regs = max((r["registers"] or 0) for r in ok) if ok else 0
        spill = max((r["spill_bytes"] or 0) for r in ok) if ok else 0
        smem = max((r.get("shared_bytes") or 0) for r in ok) / 1024 if ok else 0
        lines.append(f"{kernel:<12} {prec:<10} {arch:<6} {len(rs):>3} {mma:<5} {regs:>5} {spill:>6} {smem:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    parser.add_argument("--subset", choices=["full", "ci"], default="full",
                        help="ci: the configs most likely to spill (the test suite's share)")
    parser.add_argument("--quick", action="store_true", help="sm_90 and fp32 only")
    parser.add_argument("--report", metavar="DIR", help="write DIR/report.json (one object per kernel and config)")
    args = parser.parse_args(argv)

    from ._triton_support import TRITON_AVAILABLE, triton_interpreting

    if not TRITON_AVAILABLE:
        print("triton is not installed", file=sys.stderr)
        return 2
    if triton_interpreting():
        print("unset TRITON_INTERPRET: the interpreter replaces the autotune configs", file=sys.stderr)
        return 2

    archs, dtypes = (ARCHS[-1:], DTYPES[:1]) if args.quick else (ARCHS, DTYPES)
    jobs = build_jobs(args.subset, archs, dtypes)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(compile_job, jobs))
    failures = [r for r in rows if r["error"] is not None]
    for r in failures:
        print(f"FAIL {r['label']}: {r['error']}")
    slowest = max(rows, key=lambda r: r["seconds"])
    print(summarize(rows))
    print(f"compiled {len(rows) - len(failures)}/{len(rows)} kernels in {time.perf_counter() - start:.1f} s "
          f"(slowest {slowest['seconds']:.1f} s: {slowest['label']})")
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"report: {out / 'report.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
