"""benchmarks/gpu/validate.py, dry-run on the CPU (tiny shapes, the kernels under Triton's
interpreter): the script's plumbing works before any device time is spent on it. Its numbers mean
nothing here; what is checked is that each subcommand runs to the end and writes the rows and
fields that the README's GPU section reads from its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsecascade.kernels import TRITON_AVAILABLE

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "validate.py"


def run_dry(tmp_path: Path, *args: str, config: str | None = None) -> dict:
    env = dict(os.environ, SPARSECASCADE_VALIDATE_DRY="1", TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    if config:
        env["SPARSECASCADE_TRITON_CONFIG"] = config
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_kernels_rows_and_targets(tmp_path):
    doc = run_dry(tmp_path, "kernels", "--cases", "3x3 256->256 64x64", "--dtypes", "bf16", "--batches", "4",
                  "--fractions", "0.5", "--no-prewarm")
    (row,) = doc["rows"]
    assert (row["case"], row["dtype"], row["batch"], row["fraction"]) == ("3x3 256->256 64x64", "bf16", 4, 0.5)
    for key in ("kernel_fwd_ms", "gpu_kernel_fwd_ms", "gpu_dense_fwd_ms", "host_kernel_fwd_us", "gpu_fwd_vs_dense",
                "op_bwd_vs_dense"):
        assert row[key] is not None and row[key] > 0, key
    target = doc["target_forward_bf16_b4_f05"]
    assert target["ratio"] == row["fwd_vs_dense"] and target["met"] == (row["fwd_vs_dense"] <= 0.65)


def test_e2e_rows_and_speedup(tmp_path):
    doc = run_dry(tmp_path, "e2e", "--model", "lc_resnet50", "--size", "64", "--batches", "1", "--no-prewarm",
                  config="fixed")
    dense, lc, lc_auto, summary, summary_auto = doc["rows"]
    assert (dense["mode"], lc["mode"], lc_auto["mode"]) == ("dense_rho1", "lc_paper_stops", "lc_paper_stops_auto")
    assert lc["macs"] < dense["macs"] and summary["speedup"] == pytest.approx(dense["ms"] / lc["ms"])
    assert summary_auto["speedup"] == pytest.approx(dense["ms"] / lc_auto["ms"])
    assert summary_auto["mac_bound"] == summary["mac_bound"] == pytest.approx(dense["macs"] / lc["macs"])
    assert summary_auto["dense_fallback_fraction"] == float(os.environ["SPARSECASCADE_DENSE_FALLBACK"])
    # the paper's stop shares were imposed (to the mask's pixel granularity at 64x64)
    assert lc["stop_fractions"][0] == pytest.approx(0.23, abs=0.02)
