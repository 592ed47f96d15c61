"""The zoo's entries: an untrained name fails naming the trained models and the exact command that
trains it (a command the CLI accepts), the CamVid entries follow the package's weights, the default
model ships, the tree stays small enough for the GPU machine, and zoo/retire.py takes a model out cleanly."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsecascade as sc
from sparsecascade.cli import build_parser, train_config_from_args
from sparsecascade.zoo import DEFAULT_MODEL, TRAIN_COMMANDS, ZOO, ships

REPO = Path(__file__).resolve().parents[1]
UNTRAINED_GPU = ["lc-irnet-voc", "lc-resnet101-voc", "lc-vgg16-voc", "lc-irnet-cityscapes", "lc-resnet101-cityscapes"]
CAMVID = ["lc-vgg16-camvid", "lc-resnet18-camvid"]
_BACKBONE = re.compile(r'"\$\(python -c (\'.*?\')\)"')


def trained_models() -> list[str]:
    return sc.zoo.list_pretrained(trained_only=True)


@pytest.mark.parametrize("name", UNTRAINED_GPU)
def test_an_untrained_name_names_the_trained_models_and_the_command_that_trains_it(name):
    entry = ZOO[name]
    assert not entry.trained and entry.train_command.startswith("sparsecascade train ")
    with pytest.raises(RuntimeError) as error:
        sc.from_pretrained(name)
    message = str(error.value)
    assert message.startswith(f"{name}: not trained yet")
    assert entry.train_command in message and "--device cuda" in message
    assert trained_models() and all(model in message for model in trained_models())
    assert f"zoo/{name}/recipe.md" in message


def parse_train(command: str, monkeypatch) -> "sc.train.TrainConfig":
    """What `sparsecascade train ...` would run: the command through the CLI's own parser (CUDA faked)."""
    command = command.split("&&")[-1].strip()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    argv = shlex.split(_BACKBONE.sub("imagenet.safetensors", command))
    assert argv[:2] == ["sparsecascade", "train"]
    return train_config_from_args(build_parser().parse_args(argv[1:]))


@pytest.mark.parametrize("name", UNTRAINED_GPU + CAMVID)
def test_the_train_command_is_one_the_cli_accepts(name, monkeypatch):
    monkeypatch.chdir(REPO)  # the CamVid commands name a recipe file of the repository
    entry, command = ZOO[name], TRAIN_COMMANDS[name]
    cfg = parse_train(command, monkeypatch)
    assert cfg.model == entry.architecture and cfg.device == "cuda"
    assert cfg.dataset == {"voc2012": "voc"}.get(entry.dataset, entry.dataset)
    assert cfg.out_dir == f"runs/{name}"
    match = _BACKBONE.search(command)
    if name in UNTRAINED_GPU:  # the ImageNet weights: a Hub checkpoint the backbone has
        code = shlex.split(match.group(1))[0]
        compile(code, "<-c>", "exec")
        backbone = re.search(r'download_imagenet_weights\("(\w+)"\)', code).group(1)
        assert sc.models.get_default_cfg(backbone).get("hf_hub_id")
        assert sc.create_model(entry.architecture, entry.num_classes).config["architecture"] == entry.architecture


@pytest.mark.parametrize("name", UNTRAINED_GPU)
def test_the_recipe_card_holds_the_same_command(name):
    recipe = (REPO / "zoo" / name / "recipe.md").read_text()
    assert TRAIN_COMMANDS[name] in re.sub(r" \\\n\s*", " ", recipe)


def test_the_vgg16_camvid_entry():
    entry = ZOO["lc-vgg16-camvid"]
    assert (entry.architecture, entry.dataset, entry.num_classes) == ("lc_vgg16", "camvid", 11)
    assert entry.trained == ships("lc-vgg16-camvid")
    assert (REPO / "zoo" / "lc-vgg16-camvid" / "README.md").is_file()
    if not entry.trained:  # until experiment.sh publish ships it
        with pytest.raises(RuntimeError) as error:
            sc.from_pretrained("lc-vgg16-camvid")
        message = str(error.value)
        assert message.startswith("lc-vgg16-camvid: being trained")
        assert "zoo/lc-vgg16-camvid/experiment.sh" in message and TRAIN_COMMANDS["lc-vgg16-camvid"] in message
        assert all(model in message for model in trained_models())


@pytest.mark.parametrize("name", CAMVID)
def test_a_camvid_entry_is_trained_exactly_when_the_package_holds_its_weights(name):
    entry = ZOO[name]
    assert entry.trained == ships(name)
    assert entry.status == ("trained, in the package" if ships(name) else entry.note.split(":")[0])
    if not entry.trained:
        assert entry.status in ("being trained", "retired")


def test_the_default_model_ships():
    assert ZOO[DEFAULT_MODEL].trained and ships(DEFAULT_MODEL)
    assert sc.cli.default_model() == DEFAULT_MODEL   # what `segment` / `export` use without --model


def git_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [n for n in out.stdout.split("\0") if n]


def test_the_tracked_tree_stays_under_60_mb():
    """The device tool carries a checkout to the GPU machine only under 64 MiB: one model's weights."""
    files = git_files(REPO)
    size = sum((REPO / n).stat().st_size for n in files if (REPO / n).is_file())
    assert size < 60_000_000, f"tracked tree {size / 1e6:.1f} MB: retire a model (zoo/retire.py)"
    weights = [n for n in files if n.endswith(".safetensors")]
    assert len(weights) == len({Path(n).parent.name for n in weights}), weights  # one copy of each model


# -- zoo/retire.py, on a small repository of its own ------------------------------------------------
def make_repo(root: Path) -> None:
    def write(rel, text):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)

    for name in ("old", "new"):
        write(f"sparsecascade/weights/{name}/model.safetensors", name * 100)
        write(f"sparsecascade/weights/{name}/config.json", "{}")
    write("zoo/old/README.md", "# old\n\n<!-- status:begin -->\nShips.\n<!-- status:end -->\n\nMore.\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def retire(root: Path, *args: str):
    return subprocess.run([sys.executable, str(REPO / "zoo" / "retire.py"), *args, "--root", str(root)],
                          capture_output=True, text=True, timeout=60)


def test_retire_takes_the_weights_out_and_says_so_on_the_card(tmp_path):
    make_repo(tmp_path)
    out = retire(tmp_path, "old", "--replaced-by", "new")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "sparsecascade/weights/old").exists() and (tmp_path / "sparsecascade/weights/new").is_dir()
    staged = subprocess.run(["git", "diff", "--cached", "--name-status"], cwd=tmp_path, capture_output=True,
                            text=True).stdout
    assert "D\tsparsecascade/weights/old/model.safetensors" in staged
    card = (tmp_path / "zoo/old/README.md").read_text()
    assert "**Retired from the package.**" in card and "results.md" in card and "Ships." not in card
    assert card.startswith("# old\n\n") and card.endswith("\n\nMore.\n")
    again = retire(tmp_path, "old", "--replaced-by", "new")  # idempotent
    assert again.returncode == 0 and "already gone" in again.stdout
    assert (tmp_path / "zoo/old/README.md").read_text() == card


def test_retire_refuses_to_leave_the_package_without_a_model(tmp_path):
    make_repo(tmp_path)
    out = retire(tmp_path, "old", "--replaced-by", "absent")
    assert out.returncode == 2 and "does not ship" in out.stderr
    assert (tmp_path / "sparsecascade/weights/old/model.safetensors").is_file()
