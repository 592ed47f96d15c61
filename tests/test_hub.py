"""Saving and loading LC models: local folders, a Hugging Face cache laid out as huggingface_hub lays it
out, offline mode, the zoo registry, and every error a user can meet."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsecascade as sc
from sparsecascade import hub


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 3, rho=0.9, head_channels=8, class_names=["a", "b", "c"],
                            palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model.eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "lc_resnet18" and config["num_classes"] == 3 and config["rho"] == 0.9
    assert config["class_names"] == ["a", "b", "c"] and config["stages"][2] == ["layer4"]
    loaded = sc.from_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.rho == 0.9 and same_weights(tiny, loaded)
    assert loaded.config["palette"][1] == [0, 255, 0] and loaded.mean == tiny.mean
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, tiny(x).logits)
    assert sc.from_pretrained(str(tmp_path / "m"), rho=0.5).rho == 0.5


def test_per_stage_rho_round_trip(tiny, tmp_path):
    """A rho per stage is written as a JSON list, read back as the tuple, printed as 0.95/0.5 in the card;
    from_pretrained's rho overrides it with either kind, and refuses a tuple of the wrong length."""
    tiny.rho = (0.95, 0.5)
    try:
        tiny.save_pretrained(tmp_path / "m")
    finally:
        tiny.rho = 0.9
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rho"] == [0.95, 0.5]
    assert "default rho = 0.95/0.5." in (tmp_path / "m" / "README.md").read_text()
    loaded = sc.from_pretrained(tmp_path / "m")
    assert loaded.rho == (0.95, 0.5) and (loaded.stage_rho(0), loaded.stage_rho(1)) == (0.95, 0.5)
    assert sc.from_pretrained(tmp_path / "m", rho=0.6).rho == 0.6
    assert sc.from_pretrained(tmp_path / "m", rho=[0.8, 0.4]).rho == (0.8, 0.4)
    with pytest.raises(ValueError, match=r"^rho: expected one number in \[0, 1\] or 2 \(one per stage but the last of 3\), got 3"):
        sc.from_pretrained(tmp_path / "m", rho=(0.9, 0.8, 0.7))
    with pytest.raises(ValueError, match=r"^rho: expected a number in \[0, 1\] or a sequence of them"):
        sc.from_pretrained(tmp_path / "m", rho=(0.9, 1.2))


def test_fp16_export_and_idempotent_save(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "a", dtype=torch.float16)
    tiny.save_pretrained(tmp_path / "b", dtype=torch.float16)
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = sc.from_pretrained(tmp_path / "a")
    w = tiny.state_dict()["heads.0.0.weight"]
    assert torch.equal(loaded.state_dict()["heads.0.0.weight"], w.half().float())


def fake_hub_cache(cache: Path, repo_id: str, source: Path, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: blobs, snapshots/<commit>/<file> links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in source.iterdir():
        blob = repo / "blobs" / f"sha-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return repo


def test_hub_cache_offline(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    tiny.save_pretrained(tmp_path / "src")
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "someone/lc-tiny", tmp_path / "src")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import: patch the constant
    loaded = sc.from_pretrained("someone/lc-tiny", cache_dir=cache)
    assert same_weights(tiny, loaded)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # HF_HUB_CACHE / HF_HOME as the default cache
    assert same_weights(tiny, sc.from_pretrained("someone/lc-tiny"))
    with pytest.raises(FileNotFoundError, match="someone/other.*not in the Hugging Face cache.*offline"):
        sc.from_pretrained("someone/other", cache_dir=cache)


def test_local_files_only(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nobody/absent"):
        sc.from_pretrained("nobody/absent", cache_dir=tmp_path, local_files_only=True)


def test_zoo_registry():
    names = sc.list_models(pretrained=True)
    assert {"lc-irnet-voc", "lc-resnet101-voc", "lc-vgg16-voc", "lc-irnet-cityscapes",
            "lc-resnet101-cityscapes", "lc-resnet18-camvid"} <= set(names)
    for name in names:
        entry = sc.zoo.ZOO[name]
        assert entry.repo_id == f"sparsecascade/{name}"
        assert (Path(__file__).parents[1] / "zoo" / name / "README.md").is_file(), name
        assert entry.architecture in sc.list_models()


def test_untrained_zoo_entry_fails_clearly():
    with pytest.raises(RuntimeError, match="lc-irnet-voc: not trained yet"):
        sc.from_pretrained("lc-irnet-voc")


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match="lc-irnet-voc"):
        sc.from_pretrained("lc-unknown")


def test_damaged_and_mismatched_weights(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="model.safetensors: damaged"):
        sc.from_pretrained(tmp_path / "m")
    other = sc.create_model("lc_resnet18", 5, head_channels=8)  # 5 classes: misshapen head
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, weights)
    config = json.loads((tmp_path / "m" / "config.json").read_text())  # an intact file of another model
    config["weights_sha256"] = hub.file_sha256(weights)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="misshapen.*heads.0.2.weight: expected \\(3, 8, 1, 1\\), got \\(5, 8, 1, 1\\)"):
        sc.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        sc.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("rho", [None, 1.5, "0.9", [0.9, None]])
def test_a_config_with_a_bad_rho_is_refused(tiny, tmp_path, rho):
    """A null or stray rho in config.json is an error naming the file, never the library's default rho."""
    tiny.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["rho"] = rho
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: rho: expected a number in \[0, 1\]"):
        sc.from_pretrained(tmp_path / "m")


def test_custom_cascade_built_directly_says_how_to_save_it(tmp_path):
    model = sc.LayerCascade([torch.nn.Conv2d(3, 4, 1)], [torch.nn.Conv2d(4, 2, 1)])
    with pytest.raises(ValueError, match="cannot record how to rebuild.*register_cascade.*create_model"):
        sc.save_pretrained(model, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def two_stage_test_net(num_classes, width=4):
    """A custom model as the README registers one: any stages, built by a function."""
    stages = [torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, stride=2, padding=1), torch.nn.ReLU()),
              torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU())]
    return sc.LayerCascade(stages, num_classes=num_classes, stage_channels=[width, width], head_channels=8)


def test_registered_custom_cascade_round_trip(tmp_path, monkeypatch):
    from sparsecascade import factory

    monkeypatch.setattr(factory, "_CASCADE_BUILDERS", dict(factory._CASCADE_BUILDERS))  # registered for this test
    assert sc.register_cascade(two_stage_test_net) is two_stage_test_net
    torch.manual_seed(0)
    model = sc.create_model("two_stage_test_net", 5, rho=0.7, width=6).eval()
    assert "two_stage_test_net" in sc.list_models()
    model.save_pretrained(tmp_path / "custom")
    config = json.loads((tmp_path / "custom" / "config.json").read_text())
    assert config["architecture"] == "two_stage_test_net" and config["model_kwargs"] == {"width": 6}
    loaded = sc.from_pretrained(tmp_path / "custom")
    assert loaded.rho == 0.7 and same_weights(model, loaded)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
    # a folder whose builder is not registered in this process says what to import
    config["architecture"] = "unregistered_net"
    (tmp_path / "custom" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: unknown architecture 'unregistered_net'.*register_cascade"):
        sc.from_pretrained(tmp_path / "custom")


def test_push_to_hub_uploads_the_saved_folder(tiny, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None, create_pr=False):
            calls["files"] = sorted(os.listdir(folder_path))
            assert revision is None and create_pr is False  # the default branch, no pull request
            return "url"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert tiny.push_to_hub("me/lc-tiny", token="t") == "url"
    assert calls == {"token": "t", "create": ("me/lc-tiny", True),
                     "files": ["README.md", "config.json", "model.safetensors"]}


def test_segment(tiny, tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    for image in (rgb, Image.fromarray(rgb), tmp_path / "img.png", str(tmp_path / "img.png")):
        result = tiny.segment(image)
        assert result.labels.shape == (37, 53) and result.stage_map.shape == (37, 53)
        assert sum(result.stop_fractions) == pytest.approx(1.0)
        assert set(np.unique(result.stage_map)) <= {1, 2, 3}
    colors = np.asarray(result.colorize())
    assert colors.shape == (37, 53, 3)
    assert (colors == result.palette[result.labels]).all()
    # the labels are the argmax of the normalized image's cascade, at the image's size
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - torch.tensor(tiny.mean).view(1, 3, 1, 1)) \
        / torch.tensor(tiny.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (tiny(x).labels[0].numpy() == result.labels).all()
    assert np.asarray(result.overlay()).shape == (37, 53, 3) and np.asarray(result.stage_picture()).shape == (37, 53, 3)
    with pytest.raises(FileNotFoundError, match="no such file"):
        tiny.segment(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        tiny.segment(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        tiny.segment(rgb.astype(np.float32))


def test_segment_at_the_trained_scale(tiny, tmp_path):
    """config["shortest_edge"]: the image is resized so its shorter side has that many pixels, the
    cascade runs there, and the logits come back to the image's size before the argmax."""
    import torch.nn.functional as F

    rgb = (np.random.default_rng(1).random((60, 90, 3)) * 255).astype(np.uint8)
    tiny.config["shortest_edge"] = 30
    try:
        result = tiny.segment(rgb)
    finally:
        del tiny.config["shortest_edge"]
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - torch.tensor(tiny.mean).view(1, 3, 1, 1)) \
        / torch.tensor(tiny.std).view(1, 3, 1, 1)
    small = F.interpolate(x, size=(30, 45), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        out = tiny(small)
    assert out.logits.shape[-2:] == (30, 45)
    expected = F.interpolate(out.probs, size=(60, 90), mode="bilinear", align_corners=False).argmax(1)[0]
    assert result.labels.shape == result.stage_map.shape == (60, 90)
    assert (result.labels == expected.numpy()).all()
    stages = out.stage_map[0].numpy()  # at stage 1's resolution (1/8 of 30x45): each cell 15x15 pixels here
    assert stages.shape == (4, 6)
    assert (result.stage_map[7::15, 7::15] == stages).all()


def test_publish_dry_run_is_idempotent(tmp_path, capsys):
    import runpy
    import sys

    torch.manual_seed(0)
    model = sc.create_model("lc_resnet18", 11, head_channels=8)
    model.save_pretrained(tmp_path / "trained")
    (tmp_path / "sweep.json").write_text(json.dumps([
        {"rho": 1.0, "miou": 0.5, "stop_fractions": [0, 0, 1], "ms_per_image": 90.0, "mac_ratio": 1.0},
        {"rho": 0.985, "miou": 0.52, "stop_fractions": [0.3, 0.3, 0.4], "ms_per_image": 60.0, "mac_ratio": 0.6}]))
    script = str(Path(__file__).parents[1] / "zoo" / "publish.py")
    argv = [script, str(tmp_path / "trained"), "--name", "lc-resnet18-camvid", "--results", str(tmp_path / "sweep.json"),
            "--dtype", "float16", "--dry-run", "--out"]
    old = sys.argv
    try:
        for out in ("a", "b"):
            sys.argv = argv + [str(tmp_path / out)]
            with pytest.raises(SystemExit) as done:
                runpy.run_path(script, run_name="__main__")
            assert done.value.code == 0
    finally:
        sys.argv = old
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| miou | 52.0% |" in card and "| stop_fractions | 30.0% / 30.0% / 40.0%" in card
    assert "lc-resnet18-camvid" in card and "dry run" in capsys.readouterr().out
    # the card's numbers must be measured at the rho being published, not at a neighbouring one
    sys.argv = argv + [str(tmp_path / "c"), "--rho", "0.9"]
    try:
        with pytest.raises(SystemExit, match="has no row at rho = 0.9"):
            runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = old
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["name"] == "lc-resnet18-camvid" and config["class_names"][3] == "road"
    loaded = sc.from_pretrained(tmp_path / "a")
    assert loaded.config["dataset"] == "camvid"
