"""The shipped CamVid model as a user meets it: offline loading, the card's numbers reproduced,
bit-identical to the Hub folder it describes, and the quickstart / publish examples run as written."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sparsecascade as sc
from conftest import camvid_root
from sparsecascade.hub import SHIPPED_DIR

REPO = Path(__file__).resolve().parents[1]
NAME = "lc-resnet18-camvid"
CAMVID = camvid_root()
RESULTS = REPO / "zoo" / NAME / "results"
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE="/nonexistent-cache")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_weights_are_the_hub_folder_and_small():
    shipped, hub = SHIPPED_DIR / NAME, REPO / "zoo" / NAME / "hub"
    for name in ("config.json", "model.safetensors", "README.md"):
        assert sha256(shipped / name) == sha256(hub / name), name
    assert (shipped / "model.safetensors").stat().st_size <= 30 * 2**20
    assert sc.zoo.ZOO[NAME].trained and NAME in sc.list_models(pretrained=True)


def test_loads_offline_in_a_fresh_process(tmp_path):
    code = ("import sparsecascade as sc; m = sc.from_pretrained('lc-resnet18-camvid'); "
            "print(m.config['architecture'], m.config['num_classes'], m.rho, m.config['class_names'][3], m.training)")
    out = subprocess.run([sys.executable, "-c", code], env=OFFLINE, capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    model = sc.from_pretrained(NAME)
    assert out.stdout.split() == ["lc_resnet18", "11", str(model.rho), "road", "False"]


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_reproduces_the_measured_miou_on_the_first_val_images():
    from sparsecascade.data import build_dataset, eval_transform
    from sparsecascade.evaluate import evaluate

    card = json.loads((RESULTS / "shipped" / "eval.json").read_text())  # written by experiment.sh
    model = sc.from_pretrained(NAME)
    val = build_dataset("camvid", "val", CAMVID, transform=eval_transform(model.mean, model.std, (180, 240)))
    got = evaluate(model, val, max_images=card["num_images"])
    assert got.num_images == card["num_images"] and got.rho == card["rho"]
    assert got.miou == pytest.approx(card["miou"], abs=0.005)
    assert got.stop_fractions == pytest.approx(card["stop_fractions"], abs=0.01)


def run_example(name: str, *args: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], env=OFFLINE, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quickstart_runs_offline(tmp_path):
    stdout = run_example("quickstart.py", "--out", "pics", cwd=tmp_path)
    assert "decided at stages 1/2/3" in stdout and "road" in stdout
    sample = np.asarray(Image.open(REPO / "examples" / "images" / "camvid_0016E5_08129.jpg"))
    for name in ("labels.png", "overlay.png", "stages.png"):
        assert np.asarray(Image.open(tmp_path / "pics" / name)).shape == sample.shape, name


def test_publish_to_hub_example_round_trips(tmp_path):
    stdout = run_example("publish_to_hub.py", "--out", "published", cwd=tmp_path)
    assert "weights equal to the original rounded to fp16" in stdout and "not uploaded" in stdout
    assert sorted(p.name for p in (tmp_path / "published").iterdir()) == ["README.md", "config.json",
                                                                         "model.safetensors"]


def test_results_md_is_what_the_result_files_say(tmp_path):
    """results.md is generated from the committed evaluation files: regenerating it changes nothing."""
    out = subprocess.run([sys.executable, str(REPO / "zoo" / NAME / "make_results.py"), "--no-figures",
                          "--markdown", str(tmp_path / "results.md")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "results.md").read_text() == (REPO / "zoo" / NAME / "results.md").read_text()
