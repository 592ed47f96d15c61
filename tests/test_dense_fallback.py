"""The dense-fallback crossover (CPU and GPU) and the CPU GEMM primitive: measured once per process, or pinned."""
import subprocess
import sys

import pytest
import torch

import sparsecascade as sc
from sparsecascade.kernels.region_conv import cpu_gemm
from sparsecascade.ops import dense_fallback


def test_measured_crossover_lies_within_its_bounds():
    low, high = dense_fallback.FRACTION_BOUNDS
    assert low <= dense_fallback.measure_dense_fallback_fraction() <= high


def test_pinned_and_remeasured(monkeypatch):
    monkeypatch.setattr(dense_fallback, "_fraction", None)
    monkeypatch.setattr(dense_fallback, "measure_dense_fallback_fraction", lambda: 0.42)
    monkeypatch.delenv("SPARSECASCADE_DENSE_FALLBACK", raising=False)
    assert sc.ops.dense_fallback_fraction() == 0.42  # measured on first use ...
    monkeypatch.setattr(dense_fallback, "measure_dense_fallback_fraction", lambda: 0.77)
    assert sc.ops.dense_fallback_fraction() == 0.42  # ... once per process
    sc.ops.set_dense_fallback_fraction(None)
    assert sc.ops.dense_fallback_fraction() == 0.77
    sc.ops.set_dense_fallback_fraction(0.6)
    assert sc.ops.dense_fallback_fraction() == 0.6
    with pytest.raises(ValueError, match="fraction: expected a number in"):
        sc.ops.set_dense_fallback_fraction(1.5)


def test_the_crossover_decides_which_path_runs(monkeypatch):
    """At 50% active, a crossover of 0.4 runs the dense conv (every pixel's MACs), 0.6 the gather path."""
    x = torch.randn(1, 8, 10, 10)
    w = torch.randn(4, 8, 3, 3)
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[:, :5] = True
    for fraction, rows in ((0.4, 100), (0.6, 50)):
        monkeypatch.setattr(dense_fallback, "_fraction", fraction)
        with sc.ops.count_macs() as count:
            y = sc.region_conv2d(x, w, None, mask, padding=1, backend="auto")
        assert count.macs == rows * 4 * 8 * 9
        want = torch.where(mask[:, None], torch.nn.functional.conv2d(x, w, padding=1), 0)
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_gpu_crossover_is_measured_once_per_dtype_pinnable_and_fixed_in_deterministic_mode(monkeypatch):
    """A GPU's crossover (no GPU needed: the measurement is replaced): measured on first use per dtype and
    cached, pinned by set_dense_fallback_fraction like the CPU's, the upper bound without any timing
    under torch.use_deterministic_algorithms(True)."""
    measured = []

    def measure(device, dtype):
        measured.append(dtype)
        return {torch.bfloat16: 0.62, torch.float32: 0.51}[dtype]

    monkeypatch.setattr(dense_fallback, "measure_cuda_dense_fallback_fraction", measure)
    monkeypatch.setattr(dense_fallback, "_cuda_fractions", {})
    monkeypatch.setattr(dense_fallback, "_cuda_pinned", None)
    monkeypatch.setattr(dense_fallback, "_fraction", 0.8)
    monkeypatch.delenv("SPARSECASCADE_DENSE_FALLBACK", raising=False)
    gpu = torch.device("cuda", 0)
    assert sc.ops.dense_fallback_fraction(gpu, torch.bfloat16) == 0.62
    assert sc.ops.dense_fallback_fraction(gpu, torch.float32) == 0.51
    assert sc.ops.dense_fallback_fraction(gpu, torch.bfloat16) == 0.62
    assert measured == [torch.bfloat16, torch.float32]  # once per dtype
    assert sc.ops.dense_fallback_fraction(torch.device("cpu"), torch.bfloat16) == 0.8  # the CPU's, apart
    sc.ops.set_dense_fallback_fraction(0.7)
    assert sc.ops.dense_fallback_fraction(gpu, torch.float16) == 0.7 and len(measured) == 2
    sc.ops.set_dense_fallback_fraction(None)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert sc.ops.dense_fallback_fraction(gpu, torch.bfloat16) == dense_fallback.FRACTION_BOUNDS[1]
    assert len(measured) == 2  # no timing decides a path in deterministic mode
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert sc.ops.dense_fallback_fraction(gpu, torch.bfloat16) == 0.62 and len(measured) == 3


def test_auto_falls_back_on_every_device_and_the_named_backends_never_do():
    """"auto" runs its device's kernels with the dense fallback (a GPU's Triton too); "torch" and
    "triton" always run their kernels."""
    from types import SimpleNamespace

    from sparsecascade.kernels import TRITON_AVAILABLE
    from sparsecascade.ops.region_conv import _kernel_backend

    assert _kernel_backend("auto", torch.zeros(1)) == ("torch", True)
    assert _kernel_backend("torch", torch.zeros(1)) == ("torch", False)
    if TRITON_AVAILABLE:
        gpu_input = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16)  # what it reads of one
        assert _kernel_backend("auto", gpu_input) == ("triton", True)
        assert _kernel_backend("triton", gpu_input) == ("triton", False)


def test_environment_pins_and_bad_values_are_refused():
    code = "import sparsecascade as sc; print(sc.ops.dense_fallback_fraction())"
    env = {"SPARSECASCADE_DENSE_FALLBACK": "0.55", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0.55", out.stderr
    env["SPARSECASCADE_DENSE_FALLBACK"] = "lots"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SPARSECASCADE_DENSE_FALLBACK: expected a fraction in [0, 1], got 'lots'" in out.stderr


@pytest.mark.parametrize("choice", cpu_gemm.GEMM_CHOICES)
def test_both_gemm_primitives_compute_the_product(monkeypatch, choice):
    """Whichever primitive the measurement picks, the region conv equals the masked dense conv."""
    if choice == "onednn" and not cpu_gemm._onednn_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(cpu_gemm, "_chosen", {"small": choice, "large": choice})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 11, generator=gen)
    w = torch.randn(24, 16, 3, 3, generator=gen)
    b = torch.randn(24, generator=gen)
    mask = torch.rand(2, 9, 11, generator=gen) < 0.5
    calls = []
    primitive = getattr(cpu_gemm, f"_{choice}")
    monkeypatch.setattr(cpu_gemm, f"_{choice}", lambda *a: calls.append(1) or primitive(*a))
    y = sc.region_conv2d(x, w, b, mask, padding=1, backend="torch")
    want = torch.where(mask[:, None], torch.nn.functional.conv2d(x, w, b, padding=1), 0)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    assert calls, f"{choice} did not run the product"


def test_gemm_choice_is_measured_and_pinnable(monkeypatch):
    monkeypatch.setattr(cpu_gemm, "_chosen", None)
    monkeypatch.delenv("SPARSECASCADE_CPU_GEMM", raising=False)
    assert cpu_gemm.chosen_gemm(1) in cpu_gemm.GEMM_CHOICES
    assert cpu_gemm.chosen_gemm(1 << 30) in cpu_gemm.GEMM_CHOICES
    monkeypatch.setattr(cpu_gemm, "_chosen", None)
    monkeypatch.setenv("SPARSECASCADE_CPU_GEMM", "mkl")
    assert cpu_gemm.chosen_gemm(1) == cpu_gemm.chosen_gemm(1 << 30) == "mkl"
    monkeypatch.setattr(cpu_gemm, "_chosen", None)
    monkeypatch.setenv("SPARSECASCADE_CPU_GEMM", "blas")
    with pytest.raises(ValueError, match="SPARSECASCADE_CPU_GEMM: expected one of"):
        cpu_gemm.chosen_gemm()
