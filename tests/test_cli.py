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
from test_train import camvid_tiny  # noqa: F401 (a fixture)


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


# -- every user error: one line on stderr, exit status 2, no traceback (issue 14, item 5) -----------------
def cli_main(capsys, *argv):
    """The command in this process: (exit status, stdout, stderr)."""
    from sparsecascade import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("sparsecascade ") and ": error: " in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_out_of_range_rho_names_the_option_subprocess():
    result = run("segment", "x.png", "--rho", "1.5")
    assert_one_line_error(result.returncode, result.stderr, "argument --rho: expected a number in [0, 1]", "got '1.5'")


def test_a_rho_that_does_not_fit_the_model_names_rho_not_model(capsys, model_folder, tmp_path):
    """Three thresholds for a three-stage model (it takes one, or two): the error is --rho's."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, _, err = cli_main(capsys, "segment", str(image), "--model", str(model_folder), "--rho", "0.9/0.5/0.2",
                            "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "error: --rho: expected one number in [0, 1] or 2")
    assert "--model" not in err


def test_train_configuration_errors_are_one_line(capsys, tmp_path):
    assert_one_line_error(*cli_main(capsys, "train", "--rho", "1.5")[::2], "--rho")
    assert_one_line_error(*cli_main(capsys, "train", "--steps", "0")[::2], "--steps", "positive")
    code, _, err = cli_main(capsys, "train", "--dataset", "camvid", "--data-root", str(tmp_path / "absent"),
                            "--out", str(tmp_path / "run"), "--device", "cpu")
    assert_one_line_error(code, err, "absent/train: expected the train images")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        cli_main(capsys, "train", "--data-root", str(tmp_path / "absent"), "--out", str(tmp_path / "r"), "--debug")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_device_cuda_without_cuda(capsys):
    for argv in (["segment", "x.png"], ["eval", "--pretrained", "x", "--dataset", "camvid"], ["train"]):
        assert_one_line_error(*cli_main(capsys, *argv, "--device", "cuda")[::2],
                              "argument --device: CUDA is not available", "use --device cpu")


def test_a_mistyped_local_model_fails_at_once(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    code, _, err = cli_main(capsys, "segment", "x.png", "--model", "runs/my-modle")
    assert_one_line_error(code, err, "--model: no such folder 'runs/my-modle'", "not tried on the Hub")
    assert "cache" not in err


def test_damaged_weights_are_refused_by_segment(capsys, model_folder, tmp_path):
    import shutil

    from test_integrity import flip_data_bytes

    folder = Path(shutil.copytree(model_folder, tmp_path / "m"))
    flip_data_bytes(folder / "model.safetensors")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code, out, err = cli_main(capsys, "segment", str(tmp_path / "a.png"), "--model", str(folder),
                              "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "model.safetensors: damaged or changed")
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_pickle_without_torchs_advice(capsys, tmp_path):
    torch.save({"format": 2, "model": {}, "thing": Path("x")}, tmp_path / "last.pt")
    code, _, err = cli_main(capsys, "eval", "--checkpoint", str(tmp_path / "last.pt"))
    assert_one_line_error(code, err, "last.pt holds pickled Python objects")
    assert "weights_only" not in err


def test_train_into_an_existing_run_refuses(capsys, tmp_path):
    from test_train import make_camvid_fixture

    data = make_camvid_fixture(tmp_path / "data", n_train=4, n_val=1)
    argv = ["train", "--model", "test_train:tiny_cascade", "--dataset", "camvid", "--data-root", str(data),
            "--crop-size", "32", "32", "--batch-size", "2", "--steps", "2", "--out", str(tmp_path / "run"),
            "--workers", "0", "--no-progress", "--device", "cpu"]
    assert cli_main(capsys, *argv)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    code, _, err = cli_main(capsys, *argv)
    assert_one_line_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    code, out, _ = cli_main(capsys, *argv, "--overwrite")
    assert code == 0 and "finished at step 2/2" in out


def test_a_diverged_run_ends_in_one_line(capsys, camvid_tiny, tmp_path):
    argv = ["train", "--model", "test_integrity:nan_cascade", "--dataset", "camvid", "--data-root", str(camvid_tiny),
            "--crop-size", "32", "32", "--batch-size", "4", "--steps", "6", "--mode", "dsn",
            "--out", str(tmp_path / "run"), "--workers", "0", "--no-progress", "--device", "cpu", "--ckpt-every", "1"]
    code, _, err = cli_main(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "error: training diverged at step 3" in err and "last.pt (step 2)" in err


def test_a_data_error_in_a_loader_worker_is_the_librarys_one_line(capsys, tmp_path):
    """A label file with a value CamVid does not have, read in a DataLoader worker process: the one line
    is the data set's own message (not torch's re-raised worker traceback), as with --workers 0."""
    from test_train import make_camvid_fixture

    root = make_camvid_fixture(tmp_path / "camvid", n_train=4, n_val=1)
    bad = root / "trainannot" / "f002.png"
    label = np.array(Image.open(bad))
    label[0, 0] = 40
    Image.fromarray(label).save(bad)
    for workers in ("1", "0"):
        argv = ["train", "--model", "test_train:tiny_cascade", "--dataset", "camvid", "--data-root", str(root),
                "--crop-size", "32", "32", "--batch-size", "4", "--steps", "2", "--out", str(tmp_path / f"r{workers}"),
                "--workers", workers, "--no-progress", "--device", "cpu"]
        code, _, err = cli_main(capsys, *argv)
        assert_one_line_error(code, err, "f002.png: unexpected label values [40] for camvid")
        assert "DataLoader" not in err and "Traceback" not in err and "--debug" not in err, err


def test_optimizer_options_out_of_range_are_refused_by_name(capsys):
    for option, value, words in (("--seed", "-1", "argument --seed: expected an integer >= 0"),
                                 ("--workers", "-2", "argument --workers: expected an integer >= 0"),
                                 ("--stop-after", "0", "argument --stop-after: expected a positive integer"),
                                 ("--poly-power", "-1", "poly_power: expected a number >= 0"),
                                 ("--momentum", "1.5", "momentum: expected a number in [0, 1)"),
                                 ("--weight-decay", "-0.1", "weight_decay: expected a number >= 0")):
        code, _, err = cli_main(capsys, "train", option, value)
        assert_one_line_error(code, err, words)


def test_eval_refuses_a_rho_or_head_that_a_sweep_would_ignore(capsys, tmp_path):
    for extra in (["--rhos", "0.9,0.5", "--rho", "0.7"], ["--budget", "0.5", "--head", "1"]):
        code, _, err = cli_main(capsys, "eval", "--checkpoint", str(tmp_path / "last.pt"), *extra)
        assert_one_line_error(code, err, "--rho, --head: not with --rhos or --budget")


# -- segment: one output name per input, each file once --------------------------------------------------
def test_segment_never_writes_two_inputs_to_one_name(capsys, model_folder, tmp_path):
    from sparsecascade.cli import output_stems

    rng = np.random.default_rng(1)
    for rel in ("a/x.png", "b/x.png", "c/y.png", "c/y.jpg", "c/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / rel)
    images = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "c"),
              str(tmp_path / "c" / "*.png"), str(tmp_path / "a" / ".." / "a" / "x.png")]  # overlapping
    code, out, err = cli_main(capsys, "segment", *images, "--model", str(model_folder), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert out.count("decided at stages") == 5  # each file once
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*_labels.png"))
    assert written == ["a/x_labels.png", "b/x_labels.png", "y_jpg_labels.png", "y_png_labels.png", "z_labels.png"]
    assert output_stems([Path("c/y.png"), Path("c/y.jpg"), Path("c/y_png.gif")]) == [Path("y_png"), Path("y_jpg"),
                                                                                     Path("y_png_2")]
