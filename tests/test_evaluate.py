"""Evaluation, rho sweeps and calibrate_rho on a tiny model, against independent references."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sparsecascade import cli
from sparsecascade.data import CamVid, eval_transform
import sparsecascade as sc
from sparsecascade.evaluate import calibrate_rho, evaluate, rho_sweep
from sparsecascade.train import train

from test_train import camvid_tiny, tiny_cascade, tiny_config  # noqa: F401 (camvid_tiny: a fixture)

# MACs per output pixel of tiny_cascade (8 channels, heads 3x3 8->8 + 1x1 8->11, 11 classes), by hand
HEAD = 8 * 8 * 9 + 8 * 11
STAGE1 = 3 * 8 * 9 + HEAD
STAGE23 = 8 * 8 * 9 + HEAD


def confident_tiny(seed: int = 0, gain: float = 8.0):
    """An untrained tiny cascade whose logits are scaled so that some pixels pass rho = 0.5 and some do not."""
    torch.manual_seed(seed)
    model = tiny_cascade(11)
    with torch.no_grad():
        for head in model.heads:
            head[2].weight.mul_(gain)
            head[2].bias.mul_(gain)
    return model.eval()


@pytest.fixture(scope="module")
def val_data(camvid_tiny):  # noqa: F811
    return CamVid(camvid_tiny, "val", transform=eval_transform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


def reference(model, data, rho, num_classes=11):
    """Per image: run the model, argmax at the label's size, count with numpy loops."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    stops = np.zeros(3, np.int64)
    macs = dense = 0
    model.rho = rho
    with torch.no_grad():
        for i in range(len(data)):
            x, y = data[i]
            out = model(x[None])
            # the cascade's upsampled probabilities (test_cascade checks them against DESIGN.md section 1)
            probs = F.interpolate(out.probs, size=y.shape, mode="bilinear", align_corners=False)
            pred = probs.argmax(1)[0].numpy()
            for t, p in zip(y.numpy().flat, pred.flat):
                if t != 255:
                    cm[t, p] += 1
            stops += np.bincount(out.stage_map.numpy().ravel() - 1, minlength=3)
            macs, dense = macs + out.macs, dense + out.dense_macs
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return dict(iou=iou, miou=np.nanmean(iou), stops=stops / stops.sum(), mac_ratio=macs / dense)


def test_evaluate_matches_reference(val_data):
    model = confident_tiny()
    model.rho = 0.9
    r = evaluate(model, val_data, rho=0.5)
    assert model.rho == 0.9 and not model.training  # rho restored
    want = reference(model, val_data, 0.5)
    assert r.rho == 0.5 and r.num_images == 3
    assert r.miou == pytest.approx(want["miou"])
    np.testing.assert_allclose(np.array(r.iou, dtype=float), want["iou"])
    assert r.stop_fractions == pytest.approx(want["stops"].tolist())
    assert 0 < r.stop_fractions[0] < 1, "the tiny model should stop some pixels, not all, at stage 1"
    assert r.mac_ratio == pytest.approx(want["mac_ratio"])
    assert r.ms_per_image > 0 and len(r.stage_distribution) == 11
    assert r.class_names[0] == "sky"
    json.dumps(r.to_dict())  # JSON-ready
    assert "decided at stage" in r.report()


@pytest.mark.parametrize("max_images, batch_size", [(2, 2), (1, 4), (2, 4), (3, 2)])
def test_max_images_scores_exactly_that_many_whatever_the_batch(val_data, max_images, batch_size):
    """The first ``max_images`` images and no more, even where a batch would run past the limit."""
    model = confident_tiny()
    r = evaluate(model, val_data, rho=0.5, max_images=max_images, batch_size=batch_size)
    first = torch.utils.data.Subset(val_data, range(max_images))
    want = reference(model, first, 0.5)
    assert r.num_images == max_images
    assert r.miou == pytest.approx(want["miou"])
    assert r.stop_fractions == pytest.approx(want["stops"].tolist())


def test_resized_images_are_scored_at_label_size(camvid_tiny):  # noqa: F811
    data = CamVid(camvid_tiny, "val", transform=eval_transform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size=(20, 24)))
    assert data[0][0].shape == (3, 20, 24) and data[0][1].shape == (40, 48)
    model = confident_tiny(1)
    assert evaluate(model, data, rho=0.5).miou == pytest.approx(reference(model, data, 0.5)["miou"])


def test_mac_ratio_hand_counted(val_data):
    model = confident_tiny()
    everything_at_stage_1 = evaluate(model, val_data, rho=0.0)
    assert everything_at_stage_1.stop_fractions == [1.0, 0.0, 0.0]
    assert everything_at_stage_1.mac_ratio == pytest.approx(STAGE1 / (STAGE1 + 2 * STAGE23))
    dense = evaluate(model, val_data, rho=1.0)
    # rho = 1: every stage on every pixel, and only the last head (heads 1 and 2 could stop nothing)
    assert dense.stop_fractions == [0.0, 0.0, 1.0]
    assert dense.mac_ratio == pytest.approx((STAGE1 + 2 * STAGE23 - 2 * HEAD) / (STAGE1 + 2 * STAGE23))


def test_rho_sweep_writes_table_and_plot(val_data, tmp_path):
    model = confident_tiny()
    results = rho_sweep(model, val_data, [1.0, 0.0, 0.5], out_dir=tmp_path)
    assert [r.rho for r in results] == [0.0, 0.5, 1.0]
    with open(tmp_path / "rho_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rho", "miou", "pixel_accuracy", "ms_per_image", "mac_ratio", "stop_1", "stop_2", "stop_3"]
    for row, r in zip(rows, results):
        assert float(row["rho"]) == r.rho and float(row["miou"]) == pytest.approx(r.miou)
        assert float(row["mac_ratio"]) == pytest.approx(r.mac_ratio) and float(row["stop_1"]) == pytest.approx(r.stop_fractions[0])
    saved = json.loads((tmp_path / "rho_sweep.json").read_text())
    assert [s["rho"] for s in saved] == [0.0, 0.5, 1.0] and len(saved[0]["iou"]) == 11
    with Image.open(tmp_path / "rho_sweep.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_per_stage_rho_in_a_sweep_and_a_calibration(val_data, tmp_path):
    """Per-stage candidates follow the numbers; each is evaluated at its own thresholds: (0, 0.5) stops
    every pixel at stage 1 as rho 0 does, (1, 0) every pixel at stage 2, without running head 1."""
    model = confident_tiny()
    results = rho_sweep(model, val_data, [(1.0, 0.0), 1.0, (0.0, 0.5), 0.0], out_dir=tmp_path)
    assert [r.rho for r in results] == [0.0, 1.0, (1.0, 0.0), (0.0, 0.5)]
    assert results[2].stop_fractions == [0.0, 1.0, 0.0] and results[3].stop_fractions == [1.0, 0.0, 0.0]
    assert results[2].mac_ratio == pytest.approx((STAGE1 - HEAD + STAGE23) / (STAGE1 + 2 * STAGE23))  # no head 1
    with open(tmp_path / "rho_sweep.csv") as f:
        assert [row["rho"] for row in csv.DictReader(f)] == ["0.0", "1.0", "1/0", "0/0.5"]
    assert [s["rho"] for s in json.loads((tmp_path / "rho_sweep.json").read_text())] == [0.0, 1.0, [1.0, 0.0], [0.0, 0.5]]
    cal = calibrate_rho(model, val_data, budget=(STAGE1 - HEAD + STAGE23) / (STAGE1 + 2 * STAGE23) + 1e-9,
                        rhos=[1.0, (1.0, 0.0)])
    assert cal.rho == (1.0, 0.0) and model.rho != cal.rho
    with pytest.raises(ValueError, match=r"^rhos: expected one number in \[0, 1\] or 2"):
        rho_sweep(model, val_data, [(0.5, 0.5, 0.5)])


def test_calibrate_rho(val_data):
    assert sc.calibrate_rho is calibrate_rho  # the top-level name the issue asks for
    model = confident_tiny()
    model.rho = 0.7
    stage1_only = STAGE1 / (STAGE1 + 2 * STAGE23)
    cal = calibrate_rho(model, val_data, budget=stage1_only + 1e-9, rhos=(0.5, 1.0, 0.0))
    assert [r.rho for r in cal.curve] == [0.0, 0.5, 1.0]
    assert cal.curve[1].mac_ratio > stage1_only, "rho 0.5 should send some pixels on to stage 2"
    assert cal.rho == 0.0 and cal.result is cal.curve[0] and model.rho == 0.7
    everything = calibrate_rho(model, val_data, budget=1.0, rhos=(0.0, 0.5, 1.0))
    best = max(r.miou for r in everything.curve)
    assert everything.result.miou == best
    assert everything.rho == min((r for r in everything.curve if r.miou == best), key=lambda r: r.mac_ratio).rho
    by_time = calibrate_rho(model, val_data, budget=1e9, budget_kind="ms", rhos=(0.0, 1.0))
    assert by_time.budget_kind == "ms" and by_time.result.miou == max(r.miou for r in by_time.curve)
    with pytest.raises(ValueError, match=r"budget: no rho in \[0, 1\] fits macs <= 0.1; the cheapest, rho=0"):
        calibrate_rho(model, val_data, budget=0.1, rhos=(0.0, 1.0))
    with pytest.raises(ValueError, match="budget_kind: expected one of"):
        calibrate_rho(model, val_data, budget=0.5, budget_kind="flops")
    with pytest.raises(ValueError, match="budget: expected a positive number"):
        calibrate_rho(model, val_data, budget=0)


def test_eval_command(camvid_tiny, tmp_path, capsys):  # noqa: F811
    train(tiny_config(camvid_tiny, tmp_path / "run", mode="lc", steps=2, dsn_steps=1, rho=0.5))
    ckpt = str(tmp_path / "run" / "last.pt")
    assert cli.main(["eval", "--checkpoint", ckpt, "--workers", "0", "--no-progress"]) == 0
    single = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert single["rho"] == 0.5 and single["num_images"] == 3  # lc: evaluated at its training rho
    out = tmp_path / "sweep"
    assert cli.main(["eval", "--checkpoint", ckpt, "--rhos", "0.5,1", "--out", str(out), "--workers", "0",
                     "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} == {"rho_sweep.csv", "rho_sweep.json", "rho_sweep.png"}
    assert cli.main(["eval", "--checkpoint", ckpt, "--budget", "1.0", "--rhos", "0.5,1", "--out", str(out),
                     "--workers", "0", "--no-progress"]) == 0
    assert json.loads((out / "calibration.json").read_text())["rho"] in (0.5, 1.0)
    assert "calibrated: rho" in capsys.readouterr().out


def test_eval_command_on_a_pretrained_folder(camvid_tiny, tmp_path, capsys):  # noqa: F811
    import sparsecascade as sc

    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", num_classes=11, head_channels=16, layers=(1, 1, 1, 1)).eval()
    sc.save_pretrained(model, tmp_path / "model")
    assert cli.main(["eval", "--pretrained", str(tmp_path / "model"), "--dataset", "camvid", "--data-root",
                     str(camvid_tiny), "--rho", "1", "--out", str(tmp_path / "eval"), "--workers", "0",
                     "--no-progress"]) == 0
    got = json.loads((tmp_path / "eval" / "eval.json").read_text())
    data = CamVid(camvid_tiny, "val", transform=eval_transform(model.mean, model.std))
    assert got["miou"] == pytest.approx(reference(model, data, 1.0)["miou"])
    assert cli.main(["eval", "--pretrained", str(tmp_path / "model")]) == 2  # a one-line error on stderr
    assert "error: --dataset: --pretrained needs it" in capsys.readouterr().err
