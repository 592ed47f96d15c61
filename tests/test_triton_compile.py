"""The Triton kernels compile ahead of time for sm_80 and sm_90 and use tensor cores, no GPU needed.

The tests run under TRITON_INTERPRET=1, which swaps the autotune config lists for a single one,
so the compilation runs in a subprocess without it (``sparsecascade.kernels._aot_check``). The
test compiles the CI subset: per region-conv kernel (forward, grad-input, grad-weight), dtype
(fp16, bf16, fp32 as TF32) and arch, the config with the highest register pressure, in a
rotating channel-alignment variant, plus every confidence-kernel config (about 60 kernels, a
minute on 2 cores cold; Triton's cache makes reruns quick). The full matrix (every config in
every variant and precision, exact fp32 included; ~400 kernels, ~12 minutes on 2 cores) is

    python -m sparsecascade.kernels._aot_check --report DIR

whose DIR/report.json the same assertions hold for (``check_report``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparsecascade.kernels import TRITON_AVAILABLE

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")

REGION_KERNELS = ("forward", "grad_input", "grad_weight")
TENSOR_CORE_PRECISIONS = ("fp16", "bf16", "fp32-tf32")
ARCHS = ("sm_80", "sm_90")
A100_SHARED_BYTES = 163 * 1024  # the smaller of the two per-block limits (H100: 227 KB)
FIELDS = {"kernel", "dtype", "arch", "config", "tf32", "mma", "spill_bytes", "registers"}


def _precision(row: dict) -> str:
    return row["dtype"] + ("-tf32" if row["tf32"] else "")


def check_report(rows: list[dict]) -> None:
    """Every row compiled; every region-conv kernel has tensor-core instructions in fp16, bf16 and
    fp32-as-TF32 on both archs (exact fp32 has none, by design); nothing spills; every kernel fits
    the A100's shared memory."""
    assert rows and all(FIELDS <= set(r) for r in rows)
    failed = [r["label"] for r in rows if r["error"] is not None]
    assert not failed, failed
    for kernel in REGION_KERNELS:
        for precision in TENSOR_CORE_PRECISIONS:
            for arch in ARCHS:
                group = [r for r in rows if (r["kernel"], _precision(r), r["arch"]) == (kernel, precision, arch)]
                assert group, f"{kernel} {precision} {arch} was not compiled"
                no_mma = [r["label"] for r in group if not r["mma"]]
                assert not no_mma, f"no mma/wgmma in {no_mma}"
    if any(r["arch"] == "sm_90" and r["mma"] for r in rows):  # Hopper: warpgroup MMA where the tile allows
        assert any("wgmma.mma_async" in r.get("mma_kinds", []) for r in rows if r["arch"] == "sm_90")
    spills = [(r["label"], r["spill_bytes"], r["registers"]) for r in rows if r["spill_bytes"]]
    assert not spills, f"register spills: {spills}"
    too_big = [(r["label"], r["shared_bytes"]) for r in rows if r.get("shared_bytes", 0) > A100_SHARED_BYTES]
    assert not too_big, f"over the A100's shared memory: {too_big}"


@pytest.mark.slow
def test_region_kernels_use_tensor_cores_and_never_spill(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences Triton 3.9's default-change warning
    proc = subprocess.run(
        [sys.executable, "-m", "sparsecascade.kernels._aot_check", "--subset", "ci", "--report", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    rows = json.loads((tmp_path / "report.json").read_text())
    check_report(rows)
    kinds = {r["kernel"] for r in rows}
    assert {"forward", "grad_input", "grad_weight", "input_map", "confidence", "compact"} <= kinds, kinds


def test_ptxas_log_parsing():
    from sparsecascade.kernels._aot_check import parse_ptxas_log

    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'region_conv2d_fwd_kernel' for 'sm_90a'
ptxas info    : Function properties for region_conv2d_fwd_kernel
    24 bytes stack frame, 64 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 416 bytes cmem[0]
"""
    got = parse_ptxas_log(log)
    assert got["registers"] == 255 and got["spill_bytes"] == 108 and got["stack_bytes"] == 24


def test_tuning_keys_and_full_tile_paths():
    """The autotune key buckets P by log2 (never the raw P) and the weight layout; EVEN_* flags
    come from @triton.heuristics; the tile lists keep at most 64 fp32 accumulators per thread."""
    from sparsecascade.kernels.region_conv import triton_backward as bwd
    from sparsecascade.kernels.region_conv import triton_common as common
    from sparsecascade.kernels.region_conv import triton_forward as fwd

    for tuned in (fwd._fwd_tuned, bwd._bwd_input_tuned, bwd._bwd_weight_tuned):
        for autotuner in tuned.values():
            assert "P_BUCKET" in autotuner.keys and "P" not in autotuner.keys and "M" not in autotuner.keys
    for heuristic in (fwd._fwd_heuristic, bwd._bwd_input_heuristic, bwd._bwd_weight_heuristic):
        assert {"EVEN_CI", "EVEN_CO"} <= set(heuristic.values)
    assert [common.p_bucket(p) for p in (1, 32, 33, 4096, 4097, 10**9)] == [5, 5, 6, 12, 13, 24]
    for tiles in (fwd.FORWARD_TILES, bwd.GRAD_INPUT_TILES, bwd.GRAD_WEIGHT_TILES):
        for precision, rows in tiles.items():
            for m, n, _k, warps, _stages in rows:
                assert m * n / (32 * warps) <= 64, (precision, m, n, warps)
    # unaligned channel counts only get the small tiles
    configs = fwd.make_configs(fwd.all_tiles(fwd.FORWARD_TILES, fwd.FORWARD_UNALIGNED_TILES, "16bit"), fwd.NAMES)
    kept = common.prune(configs, rows=4096, rows_name="BLOCK_P", dims={"BLOCK_CO": 21, "BLOCK_CI": 256},
                        unaligned_ok=lambda c: common.tile_of(c, fwd.NAMES) in set(fwd.FORWARD_UNALIGNED_TILES["16bit"]))
    assert kept and all(common.tile_of(c, fwd.NAMES) in fwd.FORWARD_UNALIGNED_TILES["16bit"] for c in kept)
