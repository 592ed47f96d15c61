"""The sparsecascade command as a user runs it (subprocess): segment, list, bench, help, bad paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sparsecascade as sc


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sparsecascade.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    model = sc.create_model("lc_resnet18", 3, rho=0.5, head_channels=8)
    model.save_pretrained(folder)
    return folder


def test_help_lists_every_command():
    out = run("--help").stdout
    for command in ("train", "eval", "segment", "list", "bench"):
        assert command in out


def test_list_shows_the_zoo():
    out = run("list").stdout
    assert "lc-irnet-voc" in out and "sparsecascade/lc-resnet18-camvid" in out and "lc_resnet50" in out


def test_segment_writes_pictures_and_reports_bad_paths(model_folder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(images / name)
    (images / "broken.png").write_bytes(b"not a png")
    result = run("segment", str(images), str(tmp_path / "missing.png"), "--model", str(model_folder),
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 1  # some inputs failed, the others still ran
    assert "missing.png: no such file" in result.stderr and "broken.png" in result.stderr
    for stem in ("a", "b"):
        for kind in ("labels", "overlay", "stages"):
            with Image.open(tmp_path / "out" / f"{stem}_{kind}.png") as im:
                assert im.size == (56, 40)
    assert result.stdout.count("decided at stages 1/2/3") == 2
    ok = run("segment", str(images / "a.png"), "--model", str(model_folder), "--out", str(tmp_path / "o2"))
    assert ok.returncode == 0, ok.stderr


def test_segment_with_an_untrained_zoo_model_says_so():
    result = run("segment", "x.png", "--model", "lc-irnet-voc")
    assert result.returncode == 2 and "not trained yet" in result.stderr


def test_segment_with_the_default_shipped_model(tmp_path):
    """The README's first command: the shipped CamVid model, offline, on the sample image."""
    sample = Path(__file__).resolve().parents[1] / "examples" / "images" / "camvid_0016E5_08129.jpg"
    result = run("segment", str(sample), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "decided at stages 1/2/3" in result.stdout
    for kind in ("labels", "overlay", "stages"):
        with Image.open(tmp_path / "out" / f"camvid_0016E5_08129_{kind}.png") as im:
            assert im.size == (480, 360), kind


def test_bench_runs_a_benchmark(tmp_path):
    out = tmp_path / "k.json"
    result = run("bench", "kernels", "--batch", "1", "--size", "8", "--reps", "1", "--fractions", "0.5",
                 "--shapes", "1x1 1088->192", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["results"][0]["fraction"] == 0.5
