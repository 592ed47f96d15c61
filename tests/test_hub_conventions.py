"""The conventions Hub and timm users expect (issue 16, item 4): from_pretrained's and push_to_hub's
arguments, create_model(pretrained=True), pretrained_cfg and preprocess, segment on a list, palette
label PNGs, the card's licence and model-index, matplotlib optional, the extras and .gitignore.

Each argument is checked against an independent reference: the saved files, a Hugging Face cache
laid out by hand, the unconverted arithmetic, a value computed here."""
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sparsecascade as sc
from sparsecascade import hub
from sparsecascade.segment import Preprocess, preprocess, segment
from test_hub import fake_hub_cache, same_weights

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's, written out


def small(num_classes=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = sc.create_model("lc_resnet18", num_classes, rho=0.9, head_channels=8, layers=(1, 1, 1, 1), **kwargs)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "m"
    model = small(class_names=["a", "b", "c"])
    model.save_pretrained(folder)
    return model, folder


def shipped_zoo_name():
    name = next((n for n in sorted(sc.zoo.ZOO) if (hub.SHIPPED_DIR / n / hub.WEIGHTS_NAME).is_file()), None)
    if name is None:
        pytest.skip("no zoo model ships its weights in the package")
    return name


def one_line_value_error(fn, argument):
    with pytest.raises(ValueError) as e:
        fn()
    message = str(e.value)
    assert message.startswith(f"{argument}:") and "\n" not in message, message
    return message


# -- from_pretrained -------------------------------------------------------------------------------------
def test_from_pretrained_model_kwargs_override_the_config(saved):
    model, folder = saved
    loaded = sc.from_pretrained(folder, class_names=["sky", "road", "car"], rho=0.25)
    assert loaded.config["class_names"] == ["sky", "road", "car"] == loaded.pretrained_cfg["class_names"]
    assert loaded.rho == 0.25 and same_weights(model, loaded)
    assert json.loads((folder / "config.json").read_text())["class_names"] == ["a", "b", "c"]  # the file is unchanged


def test_unknown_model_kwarg_is_a_one_line_error(saved):
    message = one_line_value_error(lambda: sc.from_pretrained(saved[1], colour="red"), "colour")
    assert "from_pretrained" in message


def test_strict_false_loads_what_matches(saved):
    """A backbone option (one more block in layer2) makes the model differ from the file: strict refuses,
    strict=False loads every tensor the file has and leaves the new block at its initialisation."""
    model, folder = saved
    with pytest.raises(ValueError, match=r"missing \['stages.0.layer2.1"):
        sc.from_pretrained(folder, layers=(1, 2, 1, 1))
    with pytest.warns(UserWarning, match=r"strict=False: \d+ tensor\(s\) of the model not in the file"):
        loaded = sc.from_pretrained(folder, layers=(1, 2, 1, 1), strict=False)
    file = model.state_dict()
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in file.items())
    extra = [k for k in got if k not in file]
    assert extra and all(k.startswith("stages.0.layer2.1.") for k in extra)
    assert loaded.config["backbone_kwargs"]["layers"] == [1, 2, 1, 1]


def test_map_location_and_device(saved):
    _, folder = saved
    on_meta = sc.from_pretrained(folder, map_location="meta")
    assert all(p.device.type == "meta" for p in on_meta.parameters())
    assert all(p.device.type == "meta" for p in sc.from_pretrained(folder, device=torch.device("meta")).parameters())
    assert all(p.device.type == "cpu" for p in sc.from_pretrained(folder).parameters())
    one_line_value_error(lambda: sc.from_pretrained(folder, map_location="cpu", device="meta"), "map_location")
    one_line_value_error(lambda: sc.from_pretrained(folder, map_location="gpu0"), "map_location")


@pytest.mark.parametrize("argument", ["local_files_only", "force_download", "strict"])
def test_flags_must_be_booleans(saved, argument):
    one_line_value_error(lambda: sc.from_pretrained(saved[1], **{argument: "yes"}), argument)


def test_rho_is_checked_before_loading(saved):
    one_line_value_error(lambda: sc.from_pretrained(saved[1], rho=1.5), "rho")


def test_revision_selects_the_snapshot(saved, tmp_path, monkeypatch):
    """A cache with main and the tag v1 at two commits of different weights (huggingface_hub's layout)."""
    from huggingface_hub import constants

    model, folder = saved
    other = small(seed=1)
    other.save_pretrained(tmp_path / "v1")
    cache = tmp_path / "hub"
    repo = fake_hub_cache(cache, "someone/lc-rev", folder)
    v1 = "fedcba9876543210fedcba9876543210fedcba98"
    (repo / "refs" / "v1").write_text(v1)
    snap = repo / "snapshots" / v1
    snap.mkdir()
    for f in (tmp_path / "v1").iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert same_weights(model, sc.from_pretrained("someone/lc-rev", cache_dir=cache))
    assert same_weights(other, sc.from_pretrained("someone/lc-rev", cache_dir=cache, revision="v1"))
    assert sc.from_pretrained("someone/lc-rev", cache_dir=cache).pretrained_cfg["hf_hub_id"] == "someone/lc-rev"
    with pytest.raises(FileNotFoundError, match="someone/lc-rev.*not in the Hugging Face cache"):
        sc.from_pretrained("someone/lc-rev", cache_dir=cache, revision="v2")


class SnapshotSpy:
    """huggingface_hub.snapshot_download as from_pretrained calls it: records the call, returns ``folder``."""

    def __init__(self, folder):
        self.folder, self.calls = folder, []

    def __call__(self, repo_id, **kwargs):
        self.calls.append((repo_id, kwargs))
        return str(self.folder)


def test_hub_arguments_reach_one_snapshot_download(saved, tmp_path, monkeypatch):
    import huggingface_hub

    model, folder = saved
    spy = SnapshotSpy(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hf_hub_download called"))
    loaded = sc.from_pretrained("someone/lc-tiny", revision="r1", cache_dir=tmp_path, force_download=True, token="t")
    assert same_weights(model, loaded)
    assert spy.calls == [("someone/lc-tiny", dict(revision="r1", cache_dir=tmp_path, local_files_only=False,
                                                    force_download=True, token="t",
                                                    allow_patterns=["config.json", "model.safetensors", "README.md"],
                                                    library_name="sparsecascade"))]
    # a repository without weights: said at once, not left to a later error
    (tmp_path / "config_only").mkdir()
    shutil.copy(folder / "config.json", tmp_path / "config_only" / "config.json")
    spy.folder = tmp_path / "config_only"
    with pytest.raises(FileNotFoundError, match="someone/lc-tiny: the repository has no model.safetensors"):
        sc.from_pretrained("someone/lc-tiny")


def test_zoo_name_loads_the_package_copy_unless_force_download(tmp_path, monkeypatch):
    import huggingface_hub

    name = shipped_zoo_name()
    copy = Path(shutil.copytree(hub.SHIPPED_DIR / name, tmp_path / name))
    spy = SnapshotSpy(copy)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    packaged = sc.from_pretrained(name)
    assert spy.calls == []  # offline: the package's copy
    downloaded = sc.from_pretrained(name, force_download=True)
    assert [c[0] for c in spy.calls] == [sc.zoo.ZOO[name].repo_id] and spy.calls[0][1]["force_download"] is True
    assert same_weights(packaged, downloaded)


# -- push_to_hub ---------------------------------------------------------------------------------------
class FakeApi:
    """huggingface_hub.HfApi's calls, recorded; the uploaded folder is loaded back as it is uploaded."""
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("token", token))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, *, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, create_pr=None):
        FakeApi.uploaded = sc.from_pretrained(folder_path)
        FakeApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()),
                              commit_message, revision, create_pr))
        return "commit"


def test_push_to_hub_arguments(saved, monkeypatch):
    import huggingface_hub

    model, _ = saved
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    assert model.push_to_hub("me/lc-tiny", revision="v2", create_pr=True, commit_message="new weights",
                             private=True, token="t") == "commit"
    assert FakeApi.calls == [
        ("token", "t"), ("create_repo", "me/lc-tiny", True, True), ("create_branch", "me/lc-tiny", "v2", True),
        ("upload_folder", "me/lc-tiny", ["README.md", "config.json", "model.safetensors"], "new weights", "v2", True)]
    assert same_weights(model, FakeApi.uploaded)
    FakeApi.calls = []
    sc.push_to_hub(model, "me/lc-tiny")
    assert FakeApi.calls[1] == ("create_repo", "me/lc-tiny", False, True) and len(FakeApi.calls) == 3
    assert FakeApi.calls[2][3:] == ("Upload sparsecascade model", None, False)  # no branch created, no PR


@pytest.mark.parametrize("argument, value", [("repo_id", "a/b/c"), ("create_pr", "yes"), ("private", 1),
                                             ("commit_message", ""), ("revision", "")])
def test_push_to_hub_bad_arguments(saved, argument, value, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **k: pytest.fail("the Hub was asked"))
    kwargs = {"repo_id": "me/x", argument: value}
    one_line_value_error(lambda: sc.push_to_hub(saved[0], **kwargs), argument)


# -- create_model(pretrained=...) ----------------------------------------------------------------------------
def test_create_model_pretrained_zoo_name():
    name = shipped_zoo_name()
    entry = sc.zoo.ZOO[name]
    model = sc.create_model(name, pretrained=True)
    assert same_weights(model, sc.from_pretrained(name)) and not model.training
    assert model.pretrained_cfg["name"] == name and model.pretrained_cfg["hf_hub_id"] == entry.repo_id
    untrained = sc.create_model(name)
    assert untrained.config["architecture"] == entry.architecture and untrained.config["num_classes"] == entry.num_classes
    assert untrained.pretrained_cfg["dataset"] == entry.dataset
    assert not same_weights(model, untrained)
    one_line_value_error(lambda: sc.create_model(name, entry.num_classes + 1), "num_classes")


def imagenet_cache(cache: Path) -> dict:
    """timm's resnet18 ImageNet repository in a Hugging Face cache: torchvision names, a classifier."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    backbone = sc.models.create_backbone("resnet18", layers=(1, 1, 1, 1))
    state = {k: (torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v))
             if v.is_floating_point() else v for k, v in sc.models.backbone_state_dict_to_imagenet(backbone).items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    source = cache.parent / "imagenet"
    source.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, source / "model.safetensors")
    fake_hub_cache(cache, "timm/resnet18.tv_in1k", source)
    return state


def test_create_model_pretrained_architecture_loads_imagenet_weights(tmp_path):
    cache = tmp_path / "hub"
    state = imagenet_cache(cache)
    model = sc.create_model("lc_resnet18", 3, pretrained=True, layers=(1, 1, 1, 1), cache_dir=cache,
                            local_files_only=True)
    got = model.state_dict()
    # the stages split resnet18 as conv1..layer2 | layer3 | layer4 (torchvision names kept inside)
    for imagenet, ours in [("conv1.weight", "stages.0.conv1.weight"), ("bn1.running_var", "stages.0.bn1.running_var"),
                           ("layer2.0.downsample.0.weight", "stages.0.layer2.0.downsample.0.weight"),
                           ("layer3.0.conv1.weight", "stages.1.layer3.0.conv1.weight"),
                           ("layer4.0.bn2.weight", "stages.2.layer4.0.bn2.weight")]:
        assert torch.equal(got[ours], state[imagenet]), ours
    assert model.config["backbone_pretrained"] == "timm/resnet18.tv_in1k"
    with pytest.raises(FileNotFoundError):  # not in this (empty) cache, and no download allowed
        sc.create_model("lc_resnet18", 3, pretrained=True, layers=(1, 1, 1, 1), cache_dir=tmp_path / "empty",
                        local_files_only=True)


def test_create_model_bad_arguments():
    one_line_value_error(lambda: sc.create_model("lc_resnet18", 3, pretrained="yes"), "pretrained")
    one_line_value_error(lambda: sc.create_model("lc_resnet18"), "num_classes")
    one_line_value_error(lambda: sc.create_model("lc_resnet18", 3, cache_dir="x"), "cache_dir")
    one_line_value_error(lambda: sc.create_model("lc_resnet18", 3, pretrained=True, backbone_weights={}),
                         "backbone_weights")
    one_line_value_error(lambda: sc.create_model("lc-nothing"), "name")
    one_line_value_error(lambda: sc.create_model("lc_resnet18", 3, colour="red"), "colour")
    zoo_name = sorted(sc.zoo.ZOO)[0]
    one_line_value_error(lambda: sc.create_model(zoo_name, map_location="cpu"), "map_location")  # pretrained=False


def test_create_model_pretrained_on_a_registered_builder(monkeypatch):
    from sparsecascade import factory
    from test_hub import two_stage_test_net

    monkeypatch.setattr(factory, "_CASCADE_BUILDERS", dict(factory._CASCADE_BUILDERS))
    sc.register_cascade(two_stage_test_net)
    one_line_value_error(lambda: sc.create_model("two_stage_test_net", 2, pretrained=True), "pretrained")
    one_line_value_error(lambda: sc.create_model("two_stage_test_net", 2, depth=3), "depth")
    model = sc.create_model("two_stage_test_net", 2)
    assert model.pretrained_cfg["mean"] is None and model.pretrained_cfg["num_classes"] == 2


# -- the user methods: defined in the zoo layer, on every model it returns ----------------------------------
def test_models_of_the_zoo_layer_have_the_user_methods(saved, monkeypatch):
    import copy
    import pickle

    from sparsecascade import factory
    from sparsecascade.pretrained import PretrainedMixin
    from test_hub import two_stage_test_net

    monkeypatch.setattr(factory, "_CASCADE_BUILDERS", dict(factory._CASCADE_BUILDERS))
    sc.register_cascade(two_stage_test_net)
    model, folder = saved
    bare = two_stage_test_net(2)
    models = [model, sc.from_pretrained(folder), sc.create_model("two_stage_test_net", 2)]
    for m in models + [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]:
        assert isinstance(m, sc.LayerCascade) and isinstance(m, PretrainedMixin)
        assert all(callable(getattr(m, f)) for f in ("segment", "preprocess", "save_pretrained", "push_to_hub"))
        assert m.pretrained_cfg["num_classes"] == m.config["num_classes"]
    assert list(models[2].state_dict()) == list(bare.state_dict())  # the same modules, the same state dict
    assert models[1].pretrained_cfg._config is models[1].config
    # LayerCascade itself has none of them: a model built by hand uses the free functions
    assert not any(hasattr(bare, f) for f in ("segment", "preprocess", "save_pretrained", "push_to_hub"))
    rgb = np.zeros((16, 16, 3), np.uint8)
    assert segment(bare, rgb).labels.shape == (16, 16)
    torch.testing.assert_close(models[0].preprocess(rgb), preprocess(models[0], rgb))


# -- pretrained_cfg and preprocess -------------------------------------------------------------------------
def test_pretrained_cfg_is_a_view_of_the_config(saved, tmp_path):
    model = small(class_names=["a", "b", "c"])
    cfg = model.pretrained_cfg
    assert cfg["mean"] == IMAGENET_MEAN and cfg["std"] == IMAGENET_STD
    assert cfg["num_classes"] == 3 and cfg["class_names"] == ["a", "b", "c"] and cfg["architecture"] == "lc_resnet18"
    assert cfg["shortest_edge"] is None and cfg["interpolation"] == "bilinear" and cfg["hf_hub_id"] is None
    assert set(dict(cfg)) >= {"mean", "std", "shortest_edge", "num_classes", "class_names", "name"}
    cfg["shortest_edge"] = 30
    assert model.config["shortest_edge"] == 30
    model.save_pretrained(tmp_path / "m")
    assert sc.from_pretrained(tmp_path / "m").pretrained_cfg["shortest_edge"] == 30
    with pytest.raises(ValueError, match=r"pretrained_cfg\['std'\]: expected 3 numbers"):
        cfg["std"] = [1, 0, 1]
    with pytest.raises(ValueError, match="read-only"):
        cfg["interpolation"] = "nearest"
    with pytest.raises(KeyError):
        cfg["colour"] = 1


def test_zoo_model_pretrained_cfg():
    name = shipped_zoo_name()
    config = json.loads((hub.SHIPPED_DIR / name / "config.json").read_text())
    cfg = sc.from_pretrained(name).pretrained_cfg
    assert cfg["name"] == name and cfg["hf_hub_id"] == sc.zoo.ZOO[name].repo_id
    assert cfg["shortest_edge"] == config.get("shortest_edge") and list(cfg["mean"]) == config["mean"]
    assert cfg["class_names"] == config["class_names"] and cfg["dataset"] == config["dataset"]


def by_hand(rgb, mean, std):
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
    return ((x - torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1))
            / torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1)).float()


def test_preprocess_follows_the_config():
    model = small()
    rng = np.random.default_rng(0)
    a, b = ((rng.random((60, 90, 3)) * 255).astype(np.uint8) for _ in range(2))
    x = preprocess(model, [a, b])
    assert x.shape == (2, 3, 60, 90) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.cat([by_hand(a, IMAGENET_MEAN, IMAGENET_STD),
                                             by_hand(b, IMAGENET_MEAN, IMAGENET_STD)]))
    model.pretrained_cfg["shortest_edge"] = 30
    small_x = preprocess(model, Image.fromarray(a))
    expected = F.interpolate(by_hand(a, IMAGENET_MEAN, IMAGENET_STD), size=(30, 45), mode="bilinear",
                             align_corners=False, antialias=True)
    torch.testing.assert_close(small_x, expected)
    assert Preprocess.of(model) == Preprocess(IMAGENET_MEAN, IMAGENET_STD, 30, None)
    one_line_value_error(lambda: preprocess(model, [a, a[:10]]), "images")
    # a LayerCascade built by hand: its mean / std attributes, else no normalization
    plain = sc.LayerCascade([torch.nn.Conv2d(3, 4, 1)], [torch.nn.Conv2d(4, 2, 1)])
    torch.testing.assert_close(preprocess(plain, a), by_hand(a, (0, 0, 0), (1, 1, 1)))
    plain.mean, plain.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    torch.testing.assert_close(preprocess(plain, a), by_hand(a, plain.mean, plain.std))


# -- segment on a list -------------------------------------------------------------------------------------
def test_segment_a_list_in_batches_of_one_size(monkeypatch):
    from sparsecascade import segment as segment_module

    model = small()
    rng = np.random.default_rng(2)
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in [(40, 56, 3), (32, 48, 3), (40, 56, 3)]]
    alone = [model.segment(im) for im in images]
    batches = []
    real = segment_module.segment_batch
    monkeypatch.setattr(segment_module, "segment_batch", lambda m, rgbs, rho=None: batches.append(len(rgbs)) or
                        real(m, rgbs, rho))
    together = model.segment(images)
    assert batches == [2, 1]  # the two 40 x 56 images ran as one batch
    assert isinstance(together, list) and len(together) == 3
    for one, batched in zip(alone, together):
        assert (one.labels == batched.labels).all() and (one.stage_map == batched.stage_map).all()
        assert batched.stop_fractions == pytest.approx(one.stop_fractions, abs=1e-12)
        assert (batched.image == one.image).all()
    batches.clear()
    segment(model, images, batch_size=1)
    assert batches == [1, 1, 1]
    assert segment(model, []) == []
    one_line_value_error(lambda: segment(model, images, batch_size=0), "batch_size")
    one_line_value_error(lambda: segment(model, images, rho=2), "rho")


def test_label_png_keeps_the_class_ids(tmp_path):
    model = small(palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    rgb = (np.random.default_rng(3).random((37, 53, 3)) * 255).astype(np.uint8)
    result = model.segment(rgb)
    assert len(np.unique(result.labels)) > 1
    result.label_image().save(tmp_path / "labels.png")
    with Image.open(tmp_path / "labels.png") as im:
        assert im.mode == "P"
        assert (np.asarray(im) == result.labels).all()  # the pixel values are the class ids
        assert (np.asarray(im.convert("RGB")) == np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])[result.labels]).all()


# -- the model card ------------------------------------------------------------------------------------------
def test_card_has_licence_datasets_and_model_index():
    from huggingface_hub import ModelCard

    config = {"architecture": "lc_resnet18", "num_classes": 11, "rho": 0.5, "name": "lc-x", "dataset": "camvid"}
    results = {"rho": 0.5, "miou": 0.5312, "pixel_accuracy": 0.861, "mac_ratio": 0.62, "ms_per_image": 41.5,
               "stop_fractions": [0.4, 0.3, 0.3], "split": "test"}
    card = ModelCard(hub.model_card(config, results))
    assert card.data.license == "apache-2.0" and card.data.datasets == ["camvid"]
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert measured == {"mean_iou": 0.5312, "pixel_accuracy": 0.861, "mac_ratio": 0.62, "ms_per_image": 41.5}
    first = card.data.eval_results[0]
    assert (first.dataset_type, first.dataset_split, first.task_type, first.metric_args) == \
        ("camvid", "test", "image-segmentation", {"rho": 0.5})
    assert card.data.model_name == "lc-x"
    assert "| miou | 53.1% |" in card.text  # the table stays
    other = ModelCard(hub.model_card({**config, "license": "cc-by-nc-4.0"}, {**results, "miou": float("nan")}))
    assert other.data.license == "cc-by-nc-4.0"
    assert "mean_iou" not in {r.metric_type for r in other.data.eval_results}  # NaN: not a result
    bare = ModelCard(hub.model_card({k: v for k, v in config.items() if k != "dataset"}, results))
    assert bare.data.eval_results is None and bare.data.license == "apache-2.0"  # no data set: no model-index


# -- the command line: batching, palette PNGs, --help defaults, matplotlib optional ---------------------------------
def test_cli_segment_batches_and_writes_palette_pngs(saved, tmp_path, capsys, monkeypatch):
    from sparsecascade import cli
    from sparsecascade import segment as segment_module

    model, folder = saved
    rng = np.random.default_rng(4)
    arrays = {}
    for name, shape in [("a.png", (40, 56, 3)), ("b.png", (40, 56, 3)), ("c.png", (40, 56, 3)), ("d.png", (30, 20, 3))]:
        arrays[name] = (rng.random(shape) * 255).astype(np.uint8)
        Image.fromarray(arrays[name]).save(tmp_path / name)
    (tmp_path / "e.png").write_bytes(b"broken")
    batches = []
    real = segment_module.segment_batch
    monkeypatch.setattr(segment_module, "segment_batch", lambda m, rgbs, rho=None: batches.append(len(rgbs)) or
                        real(m, rgbs, rho))
    code = cli.main(["segment", *(str(tmp_path / n) for n in ["a.png", "d.png", "b.png", "c.png", "e.png"]),
                     "--model", str(folder), "--out", str(tmp_path / "out"), "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "e.png" in err  # the broken file is skipped, the others ran
    assert sorted(batches) == [1, 1, 2]  # a+b, c (batch size 2), d alone
    assert out.count("decided at stages") == 4
    for name, rgb in arrays.items():
        with Image.open(tmp_path / "out" / f"{Path(name).stem}_labels.png") as im:
            assert im.mode == "P" and (np.asarray(im) == model.segment(rgb).labels).all(), name


def test_batches_group_by_upright_size(tmp_path):
    from sparsecascade.cli import batches_of_one_size

    Image.new("RGB", (30, 20)).save(tmp_path / "wide.jpg")
    Image.new("RGB", (20, 30)).save(tmp_path / "tall.jpg")
    turned = Image.new("RGB", (30, 20))
    exif = turned.getexif()
    exif[0x0112] = 6  # rotated a quarter: read upright as 20 wide, 30 tall
    turned.save(tmp_path / "turned.jpg", exif=exif)
    (tmp_path / "bad.png").write_bytes(b"x")
    paths = [tmp_path / n for n in ("wide.jpg", "tall.jpg", "bad.png", "turned.jpg")]
    assert batches_of_one_size(paths, 8) == [[paths[0]], [paths[1], paths[3]], [paths[2]]]


def test_help_shows_the_defaults(capsys):
    from sparsecascade import cli

    for command in ("segment", "export"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert f"(default: {cli.default_model()})" in capsys.readouterr().out


def test_rho_sweep_without_matplotlib(tmp_path, monkeypatch):
    from sparsecascade.evaluate import EvalResult, save_sweep

    results = [EvalResult(rho=r, miou=0.5, pixel_accuracy=0.8, iou=[0.5], stop_fractions=[0.5, 0.5],
                          stage_distribution=[[0.5, 0.5]], ms_per_image=1.0, mac_ratio=0.7, num_images=1)
               for r in (0.5, 1.0)]
    (tmp_path / "rho_sweep.png").write_bytes(b"an older sweep's plot")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.warns(UserWarning, match="rho_sweep.png not drawn: matplotlib is not installed"):
        paths = save_sweep(results, tmp_path)
    assert set(paths) == {"csv", "json"} and not (tmp_path / "rho_sweep.png").exists()
    assert (tmp_path / "rho_sweep.csv").read_text().splitlines()[0].startswith("rho,miou")
    assert [r["rho"] for r in json.loads((tmp_path / "rho_sweep.json").read_text())] == [0.5, 1.0]


def test_eval_rhos_without_matplotlib(saved, tmp_path, capsys, monkeypatch):
    from sparsecascade import cli
    from test_train import make_camvid_fixture

    data = make_camvid_fixture(tmp_path / "camvid", n_train=1, n_val=1)
    folder = tmp_path / "m11"
    small(num_classes=11).save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli.main(["eval", "--pretrained", str(folder), "--dataset", "camvid", "--data-root", str(data),
                     "--rhos", "0.5,1", "--workers", "0", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / "eval")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(err.strip().splitlines()) == 1 and "warning: rho_sweep.png not drawn: matplotlib" in err
    assert (tmp_path / "eval" / "rho_sweep.csv").is_file() and (tmp_path / "eval" / "rho_sweep.json").is_file()
    assert not (tmp_path / "eval" / "rho_sweep.png").exists() and "rho_sweep.png" not in out


def test_eval_and_segment_take_a_rho_per_stage(saved, tmp_path, capsys):
    """--rho 0.9/0.5 and --rhos 1,0.9/0.5 reach the model as per-stage thresholds: the stop fractions are
    those of a stop rule that applies them by hand; a bad spelling is a one-line error naming --rho."""
    from sparsecascade import cli
    from sparsecascade.data import build_dataset, eval_transform
    from test_train import make_camvid_fixture

    data = make_camvid_fixture(tmp_path / "camvid", n_train=1, n_val=2)
    folder = tmp_path / "m11"
    model = small(num_classes=11)
    with torch.no_grad():
        for head in model.heads:  # confident enough that some pixels stop at each stage
            head[-1].weight.mul_(20.0)
    model.save_pretrained(folder)
    common = ["--pretrained", str(folder), "--dataset", "camvid", "--data-root", str(data), "--workers", "0",
              "--no-progress", "--device", "cpu"]
    assert cli.main(["eval", *common, "--rho", "0.9/0.5", "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["eval", *common, "--rhos", "1,0.9/0.5", "--out", str(tmp_path / "sweep")]) == 0
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    sweep = json.loads((tmp_path / "sweep" / "rho_sweep.json").read_text())
    assert one["rho"] == [0.9, 0.5] and [r["rho"] for r in sweep] == [1.0, [0.9, 0.5]]
    loaded = sc.from_pretrained(folder)
    loaded.rho = 1.0
    loaded.stop_rule = lambda logits, active, k: torch.softmax(logits.float(), 1).amax(1) >= (0.9, 0.5)[k]
    val = build_dataset("camvid", "val", data, transform=eval_transform(loaded.mean, loaded.std))
    by_hand = sc.evaluate.evaluate(loaded, val)
    assert one["stop_fractions"] == pytest.approx(by_hand.stop_fractions) == sweep[1]["stop_fractions"]
    assert 0 < by_hand.stop_fractions[0] < 1 and by_hand.stop_fractions != sweep[0]["stop_fractions"]
    capsys.readouterr()
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    assert cli.main(["segment", str(image), "--model", str(folder), "--rho", "0.9/0.5", "--out", str(tmp_path / "s")]) == 0
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", str(image), "--model", str(folder), "--rho", "0.9/x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --rho: expected a number in [0, 1], or one per stage" in err
    assert len(err.strip().splitlines()) == 1


# -- packaging -------------------------------------------------------------------------------------------------
def test_extras_agree_with_the_torch_floor():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_floor = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert torch_floor.specifier.contains("2.5.0")
    extras = {name: {Requirement(r).name: Requirement(r) for r in reqs}
              for name, reqs in project["optional-dependencies"].items()}
    for extra in ("triton", "dev"):  # torch 2.5's wheels pin triton 3.1.0: the extras must allow it
        assert extras[extra]["triton"].specifier.contains("3.1.0"), extra
    assert "h5py" in extras["tools"] and "h5py" in extras["dev"]
    assert {"onnx", "onnxscript"} <= set(extras["export"])


def test_gitignore():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [".venv/bin/python", "segment_out/a_labels.png", "runs/x/last.pt", "export_out/m.pt2"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == paths
