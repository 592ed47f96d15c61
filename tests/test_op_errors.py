"""Bad input to the ops raises a clear error naming the argument, before any kernel runs."""
import pytest
import torch

import sparsecascade as sc

X = torch.randn(2, 3, 8, 8)
W = torch.randn(4, 3, 3, 3)
M = torch.ones(2, 6, 6, dtype=torch.bool)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(mask=M.float()), TypeError, ["mask", "torch.bool", "(2, 6, 6)"]),
        (dict(mask=torch.ones(2, 8, 8, dtype=torch.bool)), ValueError, ["mask", "(2, 6, 6)", "(2, 8, 8)"]),
        (dict(mask=torch.ones(6, 6, dtype=torch.bool)), ValueError, ["mask", "(N, H_out, W_out)"]),
        (dict(weight=torch.randn(4, 5, 3, 3)), ValueError, ["weight", "C_in = 3"]),
        (dict(weight=torch.randn(0, 3, 3, 3)), ValueError, ["weight", "non-empty"]),
        (dict(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), ValueError, ["weight", "dtype"]),
        (dict(weight=torch.randn(4, 3, 9, 9)), ValueError, ["weight", "does not fit"]),
        (dict(stride=2), ValueError, ["stride", "stride 1"]),
        (dict(stride=(1, 2)), ValueError, ["stride"]),
        (dict(padding=-1, mask=torch.ones(2, 4, 4, dtype=torch.bool)), ValueError, ["padding", ">= 0"]),
        (dict(padding="same"), TypeError, ["padding", "int"]),
        (dict(dilation=0), ValueError, ["dilation", ">= 1"]),
        (dict(bias=torch.randn(5)), ValueError, ["bias", "(4,)"]),
        (dict(residual=torch.randn(2, 4, 8, 8)), ValueError, ["residual", "(2, 4, 6, 6)"]),
        (dict(scale=torch.ones(4, requires_grad=True)), ValueError, ["scale", "frozen"]),
        (dict(backend="cuda"), ValueError, ["backend", "'auto'"]),
        (dict(input=torch.randn(3, 8, 8)), ValueError, ["input", "(N, C_in, H, W)"]),
        (dict(input=torch.ones(2, 3, 8, 8, dtype=torch.int64)), ValueError, ["input", "float"]),
    ],
)
def test_region_conv2d_errors(kwargs, error, words):
    args = dict(input=X, weight=W, bias=None, mask=M)
    args.update(kwargs)
    with pytest.raises(error) as info:
        sc.region_conv2d(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_devices_that_differ():
    meta = torch.ones(2, 6, 6, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="mask: expected device cpu"):
        sc.region_conv2d(X, W, None, meta)
    with pytest.raises(ValueError, match="weight: expected device cpu"):
        sc.region_conv2d(X, W.to("meta"), None, M)


def test_triton_refuses_float64_and_auto_gives_it_the_torch_twin(monkeypatch):
    """Triton's kernels take fp32/fp16/bf16: "triton" names the argument for float64; "auto" on a GPU
    (its Triton resolution faked: no GPU here) runs float64 on the torch twin, never timing a crossover."""
    x64, w64 = X.double(), W.double()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match=r"backend: 'triton' runs float32, float16 and bfloat16 inputs, got torch.float64"):
        sc.region_conv2d(x64, w64, None, M, backend="triton")
    from sparsecascade.ops import dense_fallback, region_conv

    monkeypatch.setattr(region_conv, "resolve_backend", lambda backend, device: "triton")
    assert region_conv._kernel_backend("auto", x64) == ("torch", True)
    assert region_conv._kernel_backend("auto", X) == ("triton", True)
    monkeypatch.setattr(dense_fallback, "measure_cuda_dense_fallback_fraction",
                        lambda *a: pytest.fail("a float64 crossover must not be timed with Triton"))
    monkeypatch.setattr(dense_fallback, "_cuda_pinned", None)
    assert dense_fallback.dense_fallback_fraction(torch.device("cuda", 0), torch.float64) == dense_fallback.FRACTION_BOUNDS[1]


def test_triton_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sc.region_conv2d(X, W, None, M, backend="triton")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(rho=1.5), ValueError, ["rho", "[0, 1]"]),
        (dict(rho=float("nan")), ValueError, ["rho"]),
        (dict(rho="0.9"), ValueError, ["rho"]),
        (dict(active=torch.ones(2, 8, 8)), TypeError, ["active", "torch.bool"]),
        (dict(active=torch.ones(2, 7, 8, dtype=torch.bool)), ValueError, ["active", "(2, 8, 8)"]),
        (dict(logits=torch.randn(2, 8, 8)), ValueError, ["logits", "(N, C, H, W)"]),
        (dict(backend="gpu"), ValueError, ["backend"]),
    ],
)
def test_confidence_threshold_errors(kwargs, error, words):
    args = dict(logits=torch.randn(2, 5, 8, 8), rho=0.9, active=None)
    args.update(kwargs)
    with pytest.raises(error) as info:
        sc.confidence_threshold(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
