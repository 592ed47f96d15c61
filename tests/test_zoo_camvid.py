"""The shipped CamVid model (the package's default, ``sparsecascade.zoo.DEFAULT_MODEL``) as a user meets
it: offline loading, the card's numbers reproduced, the Hub folder built bit-identical from the one copy
git tracks, the quickstart / publish examples run as written, and every experiment's results.md (and
model card) what its result files say."""
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
from sparsecascade.rho import check_rho, format_rho

REPO = Path(__file__).resolve().parents[1]
NAME = sc.zoo.DEFAULT_MODEL
CAMVID = camvid_root()
RESULTS = REPO / "zoo" / NAME / "results"
SPEC = json.loads((REPO / "zoo" / NAME / "results_spec.json").read_text())
EXPERIMENTS = sorted(p.parent.name for p in (REPO / "zoo").glob("*/results_spec.json"))
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE="/nonexistent-cache")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_hub_folder_is_built_from_the_shipped_weights_and_they_are_small(tmp_path):
    shipped, hub = SHIPPED_DIR / NAME, tmp_path / "hub"
    out = subprocess.run([sys.executable, str(REPO / "zoo" / "publish.py"), "--name", NAME, "--dry-run", "--out", str(hub)],
                         env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "from the package's copy" in out.stdout and "nothing uploaded" in out.stdout
    for name in ("config.json", "model.safetensors", "README.md"):
        assert sha256(shipped / name) == sha256(hub / name), name
    assert json.loads((hub / "config.json").read_text())["weights_sha256"] == sha256(hub / "model.safetensors")
    assert (shipped / "model.safetensors").stat().st_size <= 50 * 2**20
    assert sc.zoo.ZOO[NAME].trained and NAME in sc.list_models(pretrained=True)
    assert not (REPO / "zoo" / NAME / "hub").exists()  # one copy in git: the package's


def test_loads_offline_in_a_fresh_process(tmp_path):
    code = (f"import sparsecascade as sc; m = sc.from_pretrained({NAME!r}); "
            "from sparsecascade.rho import format_rho; "
            "print(m.config['architecture'], m.config['num_classes'], format_rho(m.rho), m.config['class_names'][3], m.training)")
    out = subprocess.run([sys.executable, "-c", code], env=OFFLINE, capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    model = sc.from_pretrained(NAME)
    assert out.stdout.split() == [sc.zoo.ZOO[NAME].architecture, "11", format_rho(model.rho), "road", "False"]


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_reproduces_the_measured_miou_on_the_first_val_images():
    from sparsecascade.data import build_dataset, eval_transform
    from sparsecascade.evaluate import evaluate

    card = json.loads((RESULTS / "shipped" / "eval.json").read_text())  # written by experiment.sh
    model = sc.from_pretrained(NAME)
    size = tuple(SPEC["eval_size"])  # the size experiment.sh publish measured it at
    val = build_dataset("camvid", "val", CAMVID, transform=eval_transform(model.mean, model.std, size))
    got = evaluate(model, val, max_images=card["num_images"])
    assert got.num_images == card["num_images"] and got.rho == check_rho(card["rho"])
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
    stdout = run_example("publish_to_hub.py", "--model", NAME, "--out", "published", cwd=tmp_path)
    assert "weights equal to the original rounded to fp16" in stdout and "not uploaded" in stdout
    assert sorted(p.name for p in (tmp_path / "published").iterdir()) == ["README.md", "config.json",
                                                                         "model.safetensors"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_results_md_is_what_the_result_files_say(experiment, tmp_path):
    """results.md is generated from the committed evaluation files: regenerating it changes nothing
    (after new result files: python zoo/make_results.py zoo/<experiment>)."""
    out = subprocess.run([sys.executable, str(REPO / "zoo" / "make_results.py"), str(REPO / "zoo" / experiment),
                          "--no-figures", "--markdown", str(tmp_path / "results.md")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "results.md").read_text() == (REPO / "zoo" / experiment / "results.md").read_text()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_model_card_tables_are_what_the_result_files_say(experiment):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results", REPO / "zoo" / "make_results.py")
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    card = make_results.card_text(make_results.Experiment(REPO / "zoo" / experiment))
    if card is not None:  # a card with a generated block
        assert card == (REPO / "zoo" / experiment / "README.md").read_text()


def test_results_md_says_how_well_the_shipped_run_fits_its_training_images():
    """The fit sentence of results.md quotes the training-split evaluation file of the run that ships
    (not val's numbers, not another run's), at the rho it was evaluated at."""
    folder = REPO / "zoo" / "lc-vgg16-camvid"
    run = json.loads((folder / "results_spec.json").read_text())["long_run"]["run"]
    fit_file = folder / "results" / run / "train_split" / "eval.json"
    if not fit_file.is_file():
        pytest.skip(f"{fit_file} not written yet (experiment.sh eval writes it)")
    fit = json.loads(fit_file.read_text())
    lines = [line for line in (folder / "results.md").read_text().splitlines()
             if line.startswith("Does it fit its training images?")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"--checkpoint runs/camvid_vgg16/{run}/last.pt" in line and "--split train" in line
    assert f"the {fit['num_images']} training images" in line
    assert f"mIoU {100 * fit['miou']:.1f}% and pixel accuracy {100 * fit['pixel_accuracy']:.1f}% at rho = {format_rho(fit['rho'])}" in line
