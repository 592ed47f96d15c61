"""The benchmark scripts run and write what the README reports (tiny sizes: no timing is asserted)."""
import json

import pytest
import torch

import sparsecascade as sc
from sparsecascade.bench import cascade, kernels
from sparsecascade.bench.forced_stops import forced_stop_fractions
from sparsecascade.bench.timing import coherent_mask


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_coherent_mask_has_the_exact_share(fraction):
    mask = coherent_mask(2, 17, 23, fraction, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (2, 17, 23)
    assert mask.reshape(2, -1).sum(1).tolist() == [round(fraction * 17 * 23)] * 2


def test_kernel_benchmark_writes_ratios(tmp_path):
    out = tmp_path / "k.json"
    kernels.main(["--batch", "1", "--size", "8", "--reps", "1", "--shapes", "1x7 128->160", "--fractions", "1.0", "0.25",
                  "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m sparsecascade.bench kernels") and data["environment"]["torch"]
    rows = data["results"]
    assert [r["fraction"] for r in rows] == [1.0, 0.25]
    # executed MACs as the op counted them: the dense fallback at f = 1 on a CPU, the active rows at 0.25
    assert [r["mac_ratio"] for r in rows] == [1.0, 0.25]
    for r in rows:
        assert all(r[f"{p}_ms"] > 0 for p in ("dense", "region", "region_gather"))


def test_overhead_benchmark_times_inference_and_training_calls_against_their_own_baseline():
    rows = {r["call"]: r for r in kernels.bench_overhead(reps=3)}
    assert set(rows) == {"F.conv2d", "region_conv2d", "conv+BN+ReLU (nn)", "conv+BN+ReLU (region)",
                         "F.conv2d, fwd+bwd", "region_conv2d, fwd+bwd"}
    assert rows["F.conv2d"]["vs_conv2d"] == rows["F.conv2d, fwd+bwd"]["vs_conv2d"] == 1.0
    fwd, train = rows["region_conv2d"], rows["region_conv2d, fwd+bwd"]
    # the rows hold times rounded to 0.1 us and ratios of the unrounded times: equal within rounding
    assert fwd["vs_conv2d"] == pytest.approx(fwd["median_us"] / rows["F.conv2d"]["median_us"], abs=0.02)
    assert train["vs_conv2d"] == pytest.approx(train["median_us"] / rows["F.conv2d, fwd+bwd"]["median_us"], abs=0.02)


def test_cascade_benchmark_imposes_the_paper_stop_shares(tmp_path):
    out = tmp_path / "c.json"
    cascade.main(["--models", "lc_resnet18", "--size", "64", "--reps", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["stop_stage1"], r["stop_stage2"]) for r in rows] == cascade.STOP_SETTINGS
    for r in rows:
        assert r["measured_stops"][:2] == pytest.approx([r["stop_stage1"], r["stop_stage2"]], abs=0.02)
        assert r["mac_bound"] > 1.2


def test_coherent_stop_takes_the_share_from_the_active_pixels_the_same_way_each_time():
    from sparsecascade.bench.forced_stops import coherent_stop

    active = torch.ones(2, 24, 32, dtype=torch.bool)
    active[1, :, :8] = False  # image 1: a quarter inactive
    stop = coherent_stop(active, 0.25)
    assert stop.sum(dim=(1, 2)).tolist() == [192, 192] and not (stop & ~active).any()
    assert torch.equal(coherent_stop(active, 0.25), stop)  # the same blobs on every call
    # coherent: a stopped pixel's right-hand neighbour mostly stopped too (random masks: about a quarter)
    same = (stop[0, :, 1:] == stop[0, :, :-1]).float().mean()
    assert same > 0.85
    # more than the active pixels: every active pixel stops, none other
    assert torch.equal(coherent_stop(active, 0.9)[1], active[1])


def test_forced_stops_hold_for_the_with_block():
    model = sc.create_model("lc_resnet18", 3, head_channels=8, layers=(1, 1, 1, 1), rho=0.0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with forced_stop_fractions(model, [0.25, 0.5]):
            assert model(x).stop_fractions == pytest.approx([0.25, 0.5, 0.25])
        assert model.stop_rule is None and model(x).stop_fractions == [1.0, 0.0, 0.0]  # rho = 0 decides again
    with pytest.raises(ValueError, match="fractions: expected 2 shares"):
        with forced_stop_fractions(model, [0.7, 0.5]):
            pass
