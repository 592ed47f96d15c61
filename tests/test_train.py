"""Training: each mode on a tiny model, phases and poly LR by hand, exact kill-and-resume (2-process DDP:
test_distributed.py).

The tiny model and the CamVid-layout fixture below are also used by test_evaluate.py.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import sparsecascade as sc
from sparsecascade import cli
from sparsecascade._atomic import temp_pattern
from sparsecascade import train as train_mod
from sparsecascade.train import Phase, TrainConfig, plan_phases, poly_factor, train
from sparsecascade.train import checkpoint as checkpoint_mod

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# -- fixtures shared with test_evaluate.py ----------------------------------------------------------
def tiny_cascade(num_classes: int, width: int = 8) -> sc.LayerCascade:
    """Three stages at stride 4 (a BatchNorm to freeze in stage 1), default heads of 8 channels."""
    stages = [nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
              nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU())]
    model = sc.LayerCascade(stages, num_classes=num_classes, stage_channels=[width] * 3, head_channels=8)
    model.mean, model.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    if os.environ.get("SPARSECASCADE_TEST_SLOW_STEP"):  # lets the kill test land in the middle of a run
        delay = float(os.environ["SPARSECASCADE_TEST_SLOW_STEP"])
        model.register_forward_pre_hook(lambda *a: time.sleep(delay))
    return model


def make_camvid_fixture(root: Path, n_train: int = 8, n_val: int = 3, h: int = 40, w: int = 48,
                        void: bool = True, seed: int = 0) -> Path:
    """CamVid's layout: bands of classes, each class a colour plus noise (learnable); 11 = void."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (12, 3))
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        for i in range(n):
            label = np.zeros((h, w), np.uint8)
            edges = [0, *sorted(rng.integers(1, h, 3)), h]
            for a, b, c in zip(edges[:-1], edges[1:], rng.integers(0, 12 if void else 11, 4)):
                label[a:b] = c
            image = np.clip(colours[label] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"f{i:03d}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"f{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def camvid_tiny(tmp_path_factory) -> Path:
    return make_camvid_fixture(tmp_path_factory.mktemp("camvid_tiny"))


@pytest.fixture(scope="session")
def camvid_novoid(tmp_path_factory) -> Path:
    return make_camvid_fixture(tmp_path_factory.mktemp("camvid_novoid"), void=False)


def tiny_config(root: Path, out: Path, **kw) -> TrainConfig:
    values = dict(model="test_train:tiny_cascade", dataset="camvid", data_root=str(root), crop_size=(32, 32),
                  batch_size=4, steps=6, lr=0.05, rho=0.5, out_dir=str(out), workers=0, ckpt_every=1,
                  log_every=1, progress=False)
    values.update(kw)
    return TrainConfig(**values)


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# -- phases and learning rate ---------------------------------------------------------------------
def test_phase_plans():
    cfg = TrainConfig(mode="lc", steps=10, dsn_steps=4, rho=0.9)
    assert plan_phases(cfg, 3) == [Phase("dsn", 0, 4, 1.0), Phase("cascade", 4, 10, 0.9)]
    cfg = TrainConfig(mode="model_cascade", steps=10, rho=0.9)
    assert plan_phases(cfg, 3) == [Phase("stage1", 0, 3, 0.9, (0,), (0,)), Phase("stage2", 3, 7, 0.9, (1,), (1,)),
                                   Phase("stage3", 7, 10, 0.9, (2,), (2,))]
    assert plan_phases(TrainConfig(mode="plain", steps=5), 3) == [Phase("plain", 0, 5, 1.0, None, (2,))]
    assert plan_phases(TrainConfig(mode="dsn", steps=5, rho=0.9), 3) == [Phase("dsn", 0, 5, 1.0)]
    assert [p.name for p in plan_phases(TrainConfig(mode="lc", steps=8), 3)] == ["dsn", "cascade"]  # half each
    assert plan_phases(TrainConfig(mode="lc", steps=8, dsn_steps=0), 3) == [Phase("cascade", 0, 8, 0.985)]


def test_poly_factor_restarts_per_phase():
    f = poly_factor([Phase("dsn", 0, 4, 1.0), Phase("cascade", 4, 6, 0.9)], power=0.9)
    assert f(0) == 1.0 and f(4) == 1.0
    assert f(2) == pytest.approx(0.5 ** 0.9)
    assert f(3) == pytest.approx(0.25 ** 0.9)
    assert f(5) == pytest.approx(0.5 ** 0.9)


def test_drop_ratios_from_stop_fractions():
    assert train_mod.drop_ratios_from_stop_fractions([0.23, 0.29, 0.48]) == pytest.approx((0.0, 0.23, 0.52))


# -- each mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["plain", "dsn", "dsn_dropout", "model_cascade", "lc"])
def test_each_mode_trains(mode, camvid_tiny, tmp_path):
    cfg = tiny_config(camvid_tiny, tmp_path, mode=mode, steps=6, dsn_steps=3, rho=0.2, log_every=1, lr=0.05)
    torch.manual_seed(cfg.seed)
    init = weights(tiny_cascade(11))  # train() seeds the same way before building the model
    result = train(cfg)
    after = weights(result.model)
    log = read_log(tmp_path)
    assert result.finished and result.step == 6 and [e["step"] for e in log] == list(range(1, 7))
    assert all(np.isfinite(e["loss"]) for e in log)
    # the logged rate is the one the step used: poly over the phase, heads at 10x (checked on the backbone)
    phases = plan_phases(cfg, 3)
    for e in log:
        s = e["step"] - 1
        p = train_mod.phase_at(phases, s)
        assert e["lr"] == pytest.approx(0.05 * (1 - (s - p.start) / (p.end - p.start)) ** 0.9), e
        assert e["phase"] == p.name
    assert result.model.rho == (1.0 if mode in ("plain", "dsn", "dsn_dropout") else 0.2)
    assert all(p.requires_grad for p in result.model.parameters())
    if mode == "plain":  # one head: the early heads never change
        assert not changed(init, after, "heads.0.") and not changed(init, after, "heads.1.")
        assert changed(init, after, "heads.2.") and changed(init, after, "stages.0.")
    else:
        assert all(changed(init, after, f"heads.{k}.") for k in range(3))
    # BatchNorm stays frozen: its statistics never move
    bn = [k for k in init if "running_mean" in k or "running_var" in k]
    assert bn and all(torch.equal(init[k], after[k]) for k in bn)
    if mode == "lc":  # cascade phase: later stages see only the pixels below rho
        cascade = [e for e in log if e["phase"] == "cascade"]
        assert [e["phase"] for e in log] == ["dsn"] * 3 + ["cascade"] * 3
        assert all(e["region_fractions"] == [1.0, 1.0, 1.0] for e in log if e["phase"] == "dsn")
        assert any(e["region_fractions"][1] < 1.0 for e in cascade)


def test_cascade_training_at_a_rho_per_stage(camvid_tiny, tmp_path):
    """--rho 1/0: in cascade training no pixel stops at stage 1 (stage 2 sees them all) and every pixel
    stops at stage 2 (stage 3 sees none); the trained model keeps that rho."""
    args = cli.build_parser().parse_args(["train", "--rho", "1/0"])
    assert cli.train_config_from_args(args).rho == (1.0, 0.0)
    cfg = tiny_config(camvid_tiny, tmp_path, mode="lc", steps=4, dsn_steps=2, rho=[1.0, 0.0], log_every=1)
    result = train(cfg)
    cascade = [e for e in read_log(tmp_path) if e["phase"] == "cascade"]
    assert len(cascade) == 2 and all(e["region_fractions"] == [1.0, 1.0, 0.0] for e in cascade), cascade
    assert result.model.rho == (1.0, 0.0)
    with pytest.raises(ValueError, match=r"^rho: expected one number in \[0, 1\] or 2"):
        train(tiny_config(camvid_tiny, tmp_path / "bad", mode="lc", steps=2, rho=[0.5, 0.5, 0.5]))


def test_model_cascade_freezes_earlier_stages(camvid_tiny, tmp_path):
    """Stage k trains in phase k only: after phase 1 only stage/head 1 moved; phase 2 moves only stage/head 2."""
    cfg = tiny_config(camvid_tiny, tmp_path, mode="model_cascade", steps=6, rho=0.2)
    torch.manual_seed(cfg.seed)
    init = weights(tiny_cascade(11))
    w1 = weights(train(cfg, stop_after=2).model)
    w2 = weights(train(cfg, resume=True, stop_after=4).model)
    assert changed(init, w1, "stages.0.") and changed(init, w1, "heads.0.")
    assert not changed(init, w1, "stages.1.") and not changed(init, w1, "heads.1.") and not changed(init, w1, "stages.2.")
    assert not changed(w1, w2, "stages.0.") and not changed(w1, w2, "heads.0.")
    assert changed(w1, w2, "stages.1.") and changed(w1, w2, "heads.1.")
    assert not changed(w1, w2, "stages.2.") and not changed(w1, w2, "heads.2.")


def test_grad_clip_bounds_the_update(camvid_tiny, tmp_path):
    """One SGD step without weight decay moves the weights by lr * clipped gradient: a global norm of
    at most (heads' lr 0.5) * grad_clip."""
    cfg = tiny_config(camvid_tiny, tmp_path, mode="dsn", steps=1, weight_decay=0.0, grad_clip=1e-3)
    torch.manual_seed(cfg.seed)
    init = weights(tiny_cascade(11))
    after = weights(train(cfg).model)
    moved = torch.sqrt(sum(((after[k] - init[k]) ** 2).sum() for k in init if init[k].is_floating_point()))
    assert 0 < float(moved) <= 0.05 * 10 * 1e-3 * (1 + 1e-5)
    with pytest.raises(ValueError, match="grad_clip"):
        train(tiny_config(camvid_tiny, tmp_path, grad_clip=0.0))


# -- exact resume ---------------------------------------------------------------------------------
def _assert_same_run(a: Path, b: Path):
    sa = torch.load(a / "last.pt", weights_only=True)
    sb = torch.load(b / "last.pt", weights_only=True)
    assert sa["step"] == sb["step"]
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"]), k
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"]
    la, lb = read_log(a), read_log(b)
    assert [e["step"] for e in la] == [e["step"] for e in lb]
    assert [e["loss"] for e in la] == [e["loss"] for e in lb]


@pytest.mark.parametrize("mode", ["lc", "dsn_dropout"])
def test_stop_and_resume_equals_uninterrupted(mode, camvid_tiny, tmp_path):
    """8 samples, batch 4: 2 steps an epoch; stopping after step 3 stops in the middle of epoch 1, and
    in lc before the switch to cascade training (step 4)."""
    kw = dict(mode=mode, steps=7, dsn_steps=4, rho=0.3)
    train(tiny_config(camvid_tiny, tmp_path / "full", **kw))
    part = train(tiny_config(camvid_tiny, tmp_path / "split", **kw), stop_after=3)
    assert not part.finished and part.step == 3
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["batch_in_epoch"] == 1
    np.random.rand(5), torch.rand(3)  # disturb the global RNGs: the checkpoint restores them
    train(tiny_config(camvid_tiny, tmp_path / "split", **kw), resume=True)
    _assert_same_run(tmp_path / "full", tmp_path / "split")


def test_killed_subprocess_resumes_exactly(camvid_tiny, tmp_path):
    """A `sparsecascade train` subprocess SIGKILLed mid-run (possibly mid-checkpoint) resumes to the
    weights of an uninterrupted run."""
    kw = dict(mode="lc", steps=12, dsn_steps=5, rho=0.3)
    train(tiny_config(camvid_tiny, tmp_path / "full", **kw))
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(torch.get_num_threads()), SPARSECASCADE_TEST_SLOW_STEP="0.15")
    cmd = [sys.executable, "-m", "sparsecascade.cli", "train", "--model", "test_train:tiny_cascade",
           "--dataset", "camvid", "--data-root", str(camvid_tiny), "--crop-size", "32", "32", "--batch-size", "4",
           "--steps", "12", "--dsn-steps", "5", "--rho", "0.3", "--lr", "0.05", "--out", str(out), "--workers", "0",
           "--ckpt-every", "1", "--log-every", "1", "--no-progress", "--mode", "lc"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and any(json.loads(l)["step"] >= 4 for l in log.read_text().splitlines() if l.strip()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 3 <= killed_at < 12  # step 4 logged: step 3 checkpointed (the log line comes first)
    result = train(tiny_config(camvid_tiny, out, **kw), resume=True)
    assert result.finished
    _assert_same_run(tmp_path / "full", out)
    assert not list(out.glob(temp_pattern(out / "last.pt")))  # a temp file left by the kill is cleared on resume


def test_resume_refuses_other_settings(camvid_tiny, tmp_path):
    train(tiny_config(camvid_tiny, tmp_path, steps=4), stop_after=2)
    with pytest.raises(ValueError, match=r"resume: .*other settings.*'lr'"):
        train(tiny_config(camvid_tiny, tmp_path, steps=4, lr=0.1), resume=True)
    # run-control fields may change
    result = train(tiny_config(camvid_tiny, tmp_path, steps=4, log_every=2, workers=1), resume=True)
    assert result.finished


@pytest.mark.parametrize("source", ["checkpoint", "safetensors"])
def test_init_weights_starts_from_an_earlier_run(source, camvid_tiny, tmp_path):
    """A run with init_weights begins with every weight of the earlier run (not its own seed's), and
    with a fresh schedule: one step at a negligible rate ends where the earlier run ended."""
    from safetensors.torch import save_file

    earlier = weights(train(tiny_config(camvid_tiny, tmp_path / "a", steps=3, seed=1)).model)
    path = tmp_path / "a" / "last.pt"
    if source == "safetensors":
        path = tmp_path / "a.safetensors"
        save_file({k: v.contiguous() for k, v in earlier.items()}, str(path))
    later = train(tiny_config(camvid_tiny, tmp_path / "b", steps=1, seed=2, lr=1e-9, init_weights=str(path)))
    after = weights(later.model)
    assert after.keys() == earlier.keys()
    for k in earlier:
        torch.testing.assert_close(after[k], earlier[k], atol=1e-6, rtol=0, msg=k)
    assert read_log(tmp_path / "b")[0]["lr"] == pytest.approx(1e-9)  # the schedule's start, not the earlier run's end


def test_init_weights_does_not_read_backbone_weights(tmp_path):
    """A warm restart replaces every weight, so a recipe's backbone file need not be there (recipe.md's
    later parts run from an earlier part's weights); without init_weights the file is still required."""
    from sparsecascade.train.builders import build_model

    recipe = dict(model="lc_resnet18", dataset="camvid", backbone_weights=str(tmp_path / "gone.safetensors"))
    with pytest.raises((FileNotFoundError, ValueError), match="gone.safetensors"):
        build_model(TrainConfig(**recipe), 11)
    model = build_model(TrainConfig(**recipe, init_weights=str(tmp_path / "earlier.pt")), 11)
    assert isinstance(model, sc.LayerCascade) and model.heads[-1][-1].out_channels == 11


def test_init_weights_refuses_other_weights(camvid_tiny, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_cascade(11, width=4).state_dict().items()}, str(other))
    with pytest.raises(ValueError, match=r"init_weights: .*other.safetensors does not fit the model \(missing \[\], "
                                         r"unexpected \[\], other shapes \['heads"):
        train(tiny_config(camvid_tiny, tmp_path / "run", init_weights=str(other)))
    with pytest.raises(FileNotFoundError, match="init_weights: .*missing.safetensors does not exist"):
        train(tiny_config(camvid_tiny, tmp_path / "run2", init_weights=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="bn_init_images: expected 0 with init_weights"):
        train(tiny_config(camvid_tiny, tmp_path / "run3", init_weights=str(other), bn_init_images=4))


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    train_mod.atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    assert train_mod.atomic_save is checkpoint_mod.atomic_save  # the torch.save patched is the one it calls
    monkeypatch.setattr(checkpoint_mod.torch, "save", broken_save)
    with pytest.raises(OSError):
        train_mod.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


# -- errors and the command line ------------------------------------------------------------------
def test_config_errors(camvid_tiny, tmp_path):
    with pytest.raises(ValueError, match="mode: expected one of"):
        train(tiny_config(camvid_tiny, tmp_path, mode="cascade"))
    with pytest.raises(ValueError, match="batch_size: 16 is larger than the data set"):
        train(tiny_config(camvid_tiny, tmp_path, batch_size=16))
    with pytest.raises(ValueError, match="drop_ratios: expected one ratio per stage"):
        train(tiny_config(camvid_tiny, tmp_path, mode="dsn_dropout", drop_ratios=(0.0, 0.5)))
    with pytest.raises(ValueError, match="recipe: unknown keys \\['stpes'\\]"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="model: cannot import"):
        train(tiny_config(camvid_tiny, tmp_path, model="test_train:no_such_builder"))


def test_recipe_and_options(tmp_path):
    recipe = REPO / "recipes" / "camvid_lc_resnet18.json"
    cfg = TrainConfig.from_json(recipe).validate()
    assert cfg.model == "lc_resnet18" and cfg.dataset == "camvid" and cfg.mode == "lc"
    args = cli.build_parser().parse_args(["train", "--recipe", str(recipe), "--steps", "3", "--mode", "dsn",
                                          "--crop-size", "64", "96", "--no-flip", "--drop-ratios", "0,0.1,0.2"])
    got = cli.train_config_from_args(args)
    assert (got.steps, got.mode, got.crop_size, got.flip, got.drop_ratios) == (3, "dsn", (64, 96), False, (0.0, 0.1, 0.2))
    assert got.batch_size == cfg.batch_size and got.lr == cfg.lr  # the rest from the recipe
    assert cli.train_config_from_args(cli.build_parser().parse_args(["train"])) == TrainConfig()


def test_help_fits_one_screen(capsys):
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert len(capsys.readouterr().out.splitlines()) <= 55, argv  # a terminal of 55 rows


def tiny_cascade_init() -> dict:
    torch.manual_seed(0)
    return tiny_cascade(11).state_dict()


# -- the losses, by hand --------------------------------------------------------------------------
LN = math.log


def _two_stage_output(region2=None):
    """Two stages, 2 classes, maps of 1x2 pixels (a, b)."""
    s1 = torch.tensor([[0.0, LN(3)], [0.0, 0.0]]).reshape(1, 2, 1, 2)  # a: [0, 0]; b: [ln 3, 0]
    s2 = torch.tensor([[LN(3), 0.0], [0.0, LN(7)]]).reshape(1, 2, 1, 2)  # a: [ln 3, 0]; b: [0, ln 7]
    full = torch.ones(1, 1, 2, dtype=torch.bool)
    return sc.CascadeTrainOutput([s1, s2], [full, full if region2 is None else region2])


# labels at 1x4, resampled by nearest to the 1x2 maps: columns 0 and 2 (the 5s would be out of range)
TARGET = torch.tensor([[[0, 5, 1, 5]]])


def test_losses_hand_computed():
    stage1 = (LN(2) + LN(4)) / 2  # a: -log(1/2); b: -log(1/4)
    stage2 = (LN(4 / 3) + LN(8 / 7)) / 2  # a: -log(3/4); b: -log(7/8)
    out = _two_stage_output()
    assert float(sc.losses.dsn_loss(out, TARGET)) == pytest.approx(stage1 + stage2)
    assert float(sc.losses.plain_loss(out, TARGET)) == pytest.approx(stage2)
    # cascade: stage 2 only on b, the pixel forwarded to it
    only_b = torch.tensor([[[False, True]]])
    assert float(sc.losses.cascade_loss(_two_stage_output(only_b), TARGET)) == pytest.approx(stage1 + LN(8 / 7))
    # ignored label on b: both stages average over a alone
    ignored = torch.tensor([[[0, 5, 255, 5]]])
    assert float(sc.losses.dsn_loss(out, ignored)) == pytest.approx(LN(2) + LN(4 / 3))
    # label dropout: ratio 0 keeps everything, ratio 1 drops the stage (zero, still differentiable)
    assert float(sc.losses.dropout_dsn_loss(out, TARGET, [0.0, 0.0])) == pytest.approx(stage1 + stage2)
    logits = [l.clone().requires_grad_(True) for l in out.stage_logits]
    loss = sc.losses.dropout_dsn_loss(sc.CascadeTrainOutput(logits, out.regions), TARGET, [0.0, 1.0])
    assert float(loss.detach()) == pytest.approx(stage1)
    loss.backward()
    assert logits[1].grad is not None and (logits[1].grad == 0).all()
