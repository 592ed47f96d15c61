"""Ahead-of-time compile check: every Triton kernel, every config, for real NVIDIA targets.

Runs without a GPU (Triton lowers to PTX and calls ptxas for the cubin), so a CPU machine can
prove that the kernels compile for sm_80 and sm_90 in fp32 / fp16 / bf16, with the tile shapes,
warps and stages the autotuner would try. Must run with TRITON_INTERPRET unset (the interpreter
swaps the config lists for a single one):

    python -m sparsecascade.kernels._aot_check [--jobs N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

ARCHS = (80, 90)
DTYPES = ("fp32", "fp16", "bf16")


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


def _alignment_attrs(fn, types: dict[str, str], aligned_ints: tuple[str, ...]) -> dict:
    """The divisibility the runtime would specialise on: pointers of torch allocations are
    16-byte aligned; ints that are multiples of 16 (channel counts) enable vector loads and
    cp.async pipelining, a different code path from the unaligned one."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if types.get(name, "").startswith("*") or name in aligned_ints
    }


def compile_job(job: Job) -> tuple[str, float, str | None]:
    """Compile one job; returns (label, seconds, error or None)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    start = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(job.module), job.kernel)
        types = dict(job.types)
        constexprs = dict(job.constexprs)
        signature = {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}
        src = triton.compiler.ASTSource(
            fn=fn, signature=signature, constexprs=constexprs, attrs=_alignment_attrs(fn, types, job.aligned_ints),
        )
        compiled = triton.compile(
            src, target=GPUTarget("cuda", job.arch, 32),
            options={"num_warps": job.num_warps, "num_stages": job.num_stages},
        )
        missing = [k for k in ("ptx", "cubin") if not compiled.asm.get(k)]
        error = f"missing {missing}" if missing else None
    except Exception as exc:  # report every failure, not just the first
        error = f"{type(exc).__name__}: {exc}"
    return job.label, time.perf_counter() - start, error


def _scalars(names: list[str], floats: tuple[str, ...] = ()) -> dict[str, str]:
    return {n: ("fp32" if n in floats else "i32") for n in names}


def build_jobs(quick: bool = False) -> list[Job]:
    """The compile matrix: every kernel x config x arch x dtype. Kernel sizes, epilogue flags and
    channel alignment rotate over the configs, so each setting is compiled without multiplying
    the matrix (a cold run is ~100 CPU-seconds)."""
    from .confidence import triton_kernel as conf
    from .region_conv import triton_backward as bwd
    from .region_conv import triton_forward as fwd

    fwd_mod, bwd_mod, conf_mod = fwd.__name__, bwd.__name__, conf.__name__
    conv_ints = ["P", "H", "W", "H_out", "W_out", "C_in", "C_out", "pad_h", "pad_w", "dil_h", "dil_w"]
    kernel_sizes = [(3, 3), (1, 1), (1, 7), (5, 5)]
    archs = ARCHS[-1:] if quick else ARCHS
    dtypes = DTYPES[:1] if quick else DTYPES
    jobs: list[Job] = []

    def add(module, kernel, types, constexprs, warps, stages, arch, label, aligned=()):
        jobs.append(Job(module, kernel, tuple(types.items()), tuple(constexprs.items()), tuple(aligned),
                        warps, stages, arch, label + (" aligned" if aligned else "")))

    for arch in archs:
        for dt in dtypes:
            for i, cfg in enumerate(fwd.forward_configs()):
                kh, kw = kernel_sizes[i % len(kernel_sizes)]
                flags = i % 2 == 0  # alternate: full epilogue / bare conv
                types = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "idx_ptr": "*i64", "out_ptr": f"*{dt}",
                         "bias_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32", "res_ptr": f"*{dt}",
                         **_scalars(conv_ints + ["res_scale"], floats=("res_scale",))}
                cx = {"KH": kh, "KW": kw, "HAS_BIAS": flags, "HAS_SCALE": flags, "HAS_SHIFT": flags,
                      "HAS_RESIDUAL": flags, "RELU": flags, "ALLOW_TF32": dt == "fp32" and i % 4 == 2,
                      "DOT_FP32": False, **cfg.kwargs}
                add(fwd_mod, "region_conv2d_fwd_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                    f"fwd sm{arch} {dt} {kh}x{kw} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                    aligned=("C_in", "C_out") if i % 2 else ())
            for i, cfg in enumerate(bwd.grad_input_configs()):
                kh, kw = kernel_sizes[i % len(kernel_sizes)]
                types = {"g_ptr": "*fp32", "w_ptr": f"*{dt}", "idx_ptr": "*i64", "gx_ptr": "*fp32", **_scalars(conv_ints)}
                cx = {"KH": kh, "KW": kw, "ATOMIC": (kh, kw) != (1, 1), "ALLOW_TF32": i % 3 == 1, **cfg.kwargs}
                add(bwd_mod, "region_conv2d_bwd_input_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                    f"bwd_input sm{arch} {dt} {kh}x{kw} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                    aligned=("C_in", "C_out") if i % 2 == 0 else ())
            for i, cfg in enumerate(bwd.grad_weight_configs()):
                kh, kw = kernel_sizes[(i + 1) % len(kernel_sizes)]
                types = {"x_ptr": f"*{dt}", "g_ptr": "*fp32", "idx_ptr": "*i64", "gw_ptr": "*fp32", **_scalars(conv_ints)}
                cx = {"KH": kh, "KW": kw, "ALLOW_TF32": i % 3 == 1, **cfg.kwargs}
                add(bwd_mod, "region_conv2d_bwd_weight_kernel", types, cx, cfg.num_warps, cfg.num_stages, arch,
                    f"bwd_weight sm{arch} {dt} {kh}x{kw} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                    aligned=("C_in", "C_out") if i % 2 else ())
            for i, (block_m, block_c, warps) in enumerate(conf.confidence_configs()):
                types = {"logits_ptr": f"*{dt}", "active_ptr": "*u8", "labels_ptr": "*i64", "conf_ptr": "*fp32",
                         "stop_ptr": "*u8", "next_ptr": "*u8", "count_ptr": "*i32",
                         **_scalars(["M", "C", "stride_m", "rho"], floats=("rho",))}
                cx = {"HAS_ACTIVE": i % 2 == 0, "BLOCK_M": block_m, "BLOCK_C": block_c}
                add(conf_mod, "confidence_rows_kernel", types, cx, warps, 3, arch,
                    f"confidence sm{arch} {dt} M{block_m} C{block_c} w{warps}",
                    aligned=("C", "stride_m") if i % 2 else ())
        # the compaction kernel has no float pointers: once per config and arch
        for block_m, _, warps in conf.confidence_configs():
            types = {"next_ptr": "*u8", "offset_ptr": "*i64", "out_ptr": "*i64", "M": "i32"}
            add(conf_mod, "compact_rows_kernel", types, {"BLOCK_M": block_m}, warps, 3, arch,
                f"compact sm{arch} M{block_m} w{warps}")
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    parser.add_argument("--quick", action="store_true", help="sm_90 and fp32 only")
    args = parser.parse_args(argv)

    from ._triton_support import TRITON_AVAILABLE, triton_interpreting

    if not TRITON_AVAILABLE:
        print("triton is not installed", file=sys.stderr)
        return 2
    if triton_interpreting():
        print("unset TRITON_INTERPRET: the interpreter replaces the autotune configs", file=sys.stderr)
        return 2

    jobs = build_jobs(args.quick)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(compile_job, jobs))
    failures = [(label, err) for label, _, err in results if err is not None]
    for label, err in failures:
        print(f"FAIL {label}: {err}")
    slowest = max(results, key=lambda r: r[1])
    print(f"compiled {len(results) - len(failures)}/{len(results)} kernels in {time.perf_counter() - start:.1f} s "
          f"(slowest {slowest[1]:.1f} s: {slowest[0]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
