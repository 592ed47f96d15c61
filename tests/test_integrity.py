"""Nothing corrupt is accepted, nothing is lost: checksummed weights (folders, shipped, Hub snapshots),
checksummed checkpoints with the previous one kept, runs that refuse to be overwritten, stale temporary
files cleared by their real names, and a diverging run that stops itself (issue 14, items 1-3)."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
import warnings
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

import sparsecascade as sc
from sparsecascade import _atomic, hub
from sparsecascade.train import (CheckpointError, ResumeWarning, TrainingDiverged, load_checkpoint, train)
from sparsecascade.train import checkpoint as checkpoint_mod
from test_hub import fake_hub_cache
from test_train import camvid_tiny, tiny_config  # noqa: F401 (camvid_tiny: a fixture)


# -- weights -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 3, head_channels=8, layers=(1, 1, 1, 1))
    folder = tmp_path_factory.mktemp("weights") / "m"
    model.save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def flip_data_bytes(weights: Path, count: int = 4096) -> None:
    """Invert ``count`` bytes in the middle of a safetensors file's tensor data (after its header)."""
    raw = bytearray(weights.read_bytes())
    data_start = 8 + struct.unpack("<Q", raw[:8])[0]
    middle = (data_start + len(raw)) // 2
    raw[middle:middle + count] = bytes(b ^ 0xFF for b in raw[middle:middle + count])
    weights.write_bytes(bytes(raw))


def test_save_pretrained_records_the_weights_sha256(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    assert "weights_sha256" not in sc.from_pretrained(saved).config  # not carried into a re-save as stale


def test_flipped_bytes_in_the_tensor_data_are_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    flip_data_bytes(folder / "model.safetensors")
    from safetensors.torch import load_file

    load_file(str(folder / "model.safetensors"))  # safetensors alone accepts the file: its header is intact
    with pytest.raises(ValueError, match=r"m/model.safetensors: damaged or changed: its SHA-256 is .* config.json "
                                         r"records"):
        sc.from_pretrained(folder)


def test_non_finite_weights_are_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(saved, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["heads.1.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = hub.file_sha256(folder / "model.safetensors")  # an intact file of NaN weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: non-finite values .* \['heads.1.0.weight'\]"):
        sc.from_pretrained(folder)
    model = sc.from_pretrained(saved)
    with torch.no_grad():
        model.heads[0][0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"model: non-finite values .*heads.0.0.weight"):
        model.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_shipped_weights_carry_their_checksum_and_are_verified(tmp_path, monkeypatch):
    name = sc.zoo.DEFAULT_MODEL   # the model whose weights ship
    shipped = hub.SHIPPED_DIR / name
    config = json.loads((shipped / "config.json").read_text())
    assert config["weights_sha256"] == hub.file_sha256(shipped / "model.safetensors")
    copy = tmp_path / "weights"
    shutil.copytree(shipped, copy / name)
    flip_data_bytes(copy / name / "model.safetensors")
    monkeypatch.setattr(hub, "SHIPPED_DIR", copy)
    with pytest.raises(ValueError, match=f"{name}/model.safetensors: damaged or changed"):
        sc.from_pretrained(name)


def test_hub_snapshot_is_verified(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    source = copy_of(saved, tmp_path)
    flip_data_bytes(source / "model.safetensors")
    fake_hub_cache(tmp_path / "hub", "someone/lc-bad", source)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="snapshots/.*/model.safetensors: damaged or changed"):
        sc.from_pretrained("someone/lc-bad", cache_dir=tmp_path / "hub")


def test_a_mistyped_local_path_fails_at_once_without_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    for name in ("runs/my-modle", "./my-model", "~/no/such/model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no such folder.*not tried on the Hub"):
            sc.from_pretrained(name)
    with pytest.raises(FileNotFoundError, match=r"runs/ exists, but holds no 'my-modle'"):
        sc.from_pretrained("runs/my-modle")


# -- checkpoints ---------------------------------------------------------------------------------------
def flip_tensor_bytes(checkpoint: Path, key: str) -> None:
    """Invert the bytes of one model tensor inside a torch checkpoint: the zip stays readable."""
    tensor = torch.load(checkpoint, weights_only=True)["model"][key]
    needle = bytes(tensor.untyped_storage())
    raw = checkpoint.read_bytes()
    at = raw.index(needle)
    checkpoint.write_bytes(raw[:at] + bytes(b ^ 0xFF for b in needle) + raw[at + len(needle):])


def steps_of(out: Path) -> dict:
    return {name: torch.load(out / name, weights_only=True)["step"] for name in ("last.pt", "previous.pt")
            if (out / name).exists()}


def test_each_checkpoint_has_a_checksum_and_the_previous_one_is_kept(camvid_tiny, tmp_path):
    train(tiny_config(camvid_tiny, tmp_path, steps=3))
    assert steps_of(tmp_path) == {"last.pt": 3, "previous.pt": 2}
    for name in ("last.pt", "previous.pt"):
        assert len(torch.load(tmp_path / name, weights_only=True)["sha256"]) == 64
        assert load_checkpoint(tmp_path / name)["format"] == 2


RESUMED = dict(mode="lc", steps=6, dsn_steps=3, rho=0.3)


@pytest.fixture(scope="module")
def uninterrupted(camvid_tiny, tmp_path_factory) -> dict:
    """The weights of a run of RESUMED's settings that nothing interrupted."""
    return train(tiny_config(camvid_tiny, tmp_path_factory.mktemp("full"), **RESUMED)).model.state_dict()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "missing"])
def test_a_damaged_last_checkpoint_resumes_from_the_previous_one(damage, camvid_tiny, uninterrupted, tmp_path):
    kw = RESUMED
    out = tmp_path / "split"
    train(tiny_config(camvid_tiny, out, **kw), stop_after=4)
    last = out / "last.pt"
    if damage == "flipped":
        flip_tensor_bytes(last, "heads.2.0.weight")
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    else:  # killed between moving last.pt to previous.pt and writing the new one
        last.unlink()
    with pytest.warns(ResumeWarning, match=r"resume: .*last.pt .*; resuming from .*previous.pt \(step 3\)"):
        result = train(tiny_config(camvid_tiny, out, **kw), resume=True)
    assert result.finished
    for k, v in uninterrupted.items():  # exactly the uninterrupted run, from step 3 on
        assert torch.equal(v, result.model.state_dict()[k]), k
    assert steps_of(out) == {"last.pt": 6, "previous.pt": 5}


def test_no_intact_checkpoint_refuses_and_changes_nothing(camvid_tiny, tmp_path):
    train(tiny_config(camvid_tiny, tmp_path, steps=3))
    for name in ("last.pt", "previous.pt"):
        flip_tensor_bytes(tmp_path / name, "heads.0.0.weight")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=r"resume: no intact checkpoint in .*last.pt is damaged \(its content "
                                              r"does not match its checksum\); .*previous.pt is damaged"):
        train(tiny_config(camvid_tiny, tmp_path, steps=3), resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_pickle_is_refused_without_passing_on_torchs_advice(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"format": 2, "model": {}, "thing": Path("x")}, path)  # an arbitrary Python object
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "pickle.pt holds pickled Python objects" in message and "weights_only" not in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("content", [b"x\n", b"\0" * 100, bytes(range(256)) * 16], ids=["text", "zeros", "bytes"])
def test_garbage_is_called_damaged_not_pickled_objects(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"last.pt is damaged or not a torch checkpoint") as error:
        load_checkpoint(path)
    assert "pickled Python objects" not in str(error.value) and "weights_only" not in str(error.value)


def test_training_again_without_resume_refuses_and_changes_nothing(camvid_tiny, tmp_path):
    train(tiny_config(camvid_tiny, tmp_path, steps=3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"out_dir: .* already holds a run \(last.pt, previous.pt, log.jsonl\); "
                                         r"continue it with --resume .* --overwrite"):
        train(tiny_config(camvid_tiny, tmp_path, steps=3))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # --overwrite starts again: a new log, no checkpoint of the old run left
    train(tiny_config(camvid_tiny, tmp_path, steps=1), overwrite=True)
    assert steps_of(tmp_path) == {"last.pt": 1}
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]


def test_temporary_files_are_cleared_by_the_names_they_really_have(camvid_tiny, tmp_path, monkeypatch):
    seen = []

    def spy(f):  # the temporary file atomic_write is writing, as the directory lists it
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "last.pt")
        f.write(b"x")

    _atomic.atomic_write(tmp_path / "last.pt", spy)
    assert len(seen) == 1 and fnmatch(seen[0], _atomic.temp_pattern(tmp_path / "last.pt")), seen
    train(tiny_config(camvid_tiny, tmp_path / "run", steps=4), stop_after=2)
    # what a kill during a checkpoint write leaves behind
    _, stale = tempfile.mkstemp(dir=tmp_path / "run", prefix=".last.pt.", suffix=".tmp")
    assert fnmatch(Path(stale).name, _atomic.temp_pattern(tmp_path / "run" / "last.pt"))
    train(tiny_config(camvid_tiny, tmp_path / "run", steps=4), resume=True)
    assert not Path(stale).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "last.pt", "log.jsonl",
                                                                    "previous.pt"]


# -- a run that diverges -------------------------------------------------------------------------------
def exploding_cascade(num_classes: int, explode_at: int = 14, gain: float = 1e4):
    """tiny_cascade whose logits are multiplied by ``gain`` from forward call ``explode_at`` on (1-based)."""
    from test_train import tiny_cascade

    model = tiny_cascade(num_classes)
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1
        return output * gain if calls[0] >= explode_at else output

    model.heads[0].register_forward_hook(hook)
    return model


def test_a_loss_far_above_its_median_stops_the_run(camvid_tiny, tmp_path):
    cfg = tiny_config(camvid_tiny, tmp_path, mode="dsn", steps=30, model="test_integrity:exploding_cascade")
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 14 \(dsn\): the loss .* is \d+x its "
                                               r"running median .*; stopped, and the last good checkpoint is .*last.pt "
                                               r"\(step 13\)"):
        train(cfg)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 13 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert max(json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()) == 13


def test_a_non_finite_loss_stops_the_run(camvid_tiny, tmp_path):
    cfg = tiny_config(camvid_tiny, tmp_path, mode="dsn", steps=6, model="test_integrity:nan_cascade")
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3 \(dsn\): the loss is nan; .*\(step 2\)"):
        train(cfg)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


def nan_cascade(num_classes: int):
    return exploding_cascade(num_classes, explode_at=3, gain=float("nan"))
