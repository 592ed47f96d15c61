"""Data-parallel training equals one process (issue 14, item 6): torchrun, 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecascade.train import train
from test_train import TESTS, camvid_tiny, read_log, tiny_cascade_init, tiny_config  # noqa: F401 (a fixture)


def torchrun_train(data: Path, out: Path, *options: str,
                   model: str = "test_train:tiny_cascade") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sparsecascade.cli", "train", "--model", model, "--dataset", "camvid",
           "--data-root", str(data), "--crop-size", "32", "32", "--batch-size", "4", "--lr", "0.05",
           "--out", str(out), "--workers", "0", "--no-progress", "--device", "cpu", "--log-every", "1", *options]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_train_as_one(camvid_tiny, tmp_path):
    """Global batch 4 in one process, or 2 + 2 in two: the same weights and the same logged losses.

    The processes see different numbers of labelled pixels (void labels, crops of rescaled images
    padded with the ignore label) and, in the cascade phase (rho 0.5), different regions per stage:
    each stage's loss must be the mean over the pixels of the global batch, not a mean of means. The
    run switches from DSN to cascade training, which re-wraps the model for DDP."""
    kw = dict(mode="lc", steps=6, dsn_steps=2, rho=0.5, ckpt_every=10)
    train(tiny_config(camvid_tiny, tmp_path / "one", **kw))
    run = torchrun_train(camvid_tiny, tmp_path / "two", "--steps", "6", "--dsn-steps", "2", "--rho", "0.5")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("finished at step 6/6") == 1  # rank 0 alone reports
    for warning in ("Grad strides do not match", "find_unused_parameters", "unused parameters"):
        assert warning not in run.stderr, run.stderr  # fixed at their causes, not filtered

    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert not torch.equal(one["model"]["heads.2.2.weight"], tiny_cascade_init()["heads.2.2.weight"])  # it trained

    log_one, log_two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [e["step"] for e in log_two] == list(range(1, 7))
    for a, b in zip(log_one, log_two):  # the logged loss and stage shares are the global batch's
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["region_fractions"] == pytest.approx(a["region_fractions"], abs=2e-3), (a, b)
    assert any(e["region_fractions"][1] < 1 for e in log_one)  # the cascade phase did cut regions


def test_a_diverging_data_parallel_run_stops_on_every_process(camvid_tiny, tmp_path):
    """Every process sees the global loss, so all stop at the same step (none waits for the others)."""
    run = torchrun_train(camvid_tiny, tmp_path / "nan", "--steps", "6", "--mode", "dsn", "--ckpt-every", "1",
                         model="test_integrity:nan_cascade")
    assert run.returncode != 0
    assert run.stderr.count("error: training diverged at step 3") == 2, run.stderr  # one line per process
    assert json.loads((tmp_path / "nan" / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
