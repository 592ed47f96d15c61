"""The model zoo: published LC models, their Hub repositories and their state of training.

Each entry names its architecture (a ``create_model`` name), data set and Hub repository, and
points to ``zoo/<name>/`` in the repository (model card, training recipe, measured results).
An entry whose weights have not been trained says so, and loading it fails with that message,
which names the trained models and the command that trains the entry.

The CamVid models are trained on this project's CPU and never uploaded: the package is where their
weights live, so such an entry is trained exactly when the package holds its weights
(``ships(name)``). ``zoo/publish.py --ship`` puts them there, ``zoo/retire.py`` takes them out (the
tracked tree must stay under ~60 MB: one model's weights at a time), and the entry, the default
model of ``sparsecascade segment`` and the quickstart follow without an edit here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HUB_ORGANIZATION = "sparsecascade"
_WEIGHTS_DIR = Path(__file__).parent / "weights"  # = hub.SHIPPED_DIR (hub imports this module, not the reverse)


def ships(name: str) -> bool:
    """True when the package holds the entry's weights (they load offline)."""
    return (_WEIGHTS_DIR / name / "model.safetensors").is_file()


@dataclass(frozen=True)
class ZooEntry:
    name: str
    architecture: str
    dataset: str
    num_classes: int
    trained: bool = False
    revision: Optional[str] = None  # pinned Hub revision once published
    note: str = ""  # hub.from_pretrained formats it with name=<entry name>: no other braces
    train_command: str = ""  # the command that trains it (on a GPU, with its data set)

    @property
    def repo_id(self) -> str:
        return f"{HUB_ORGANIZATION}/{self.name}"

    @property
    def status(self) -> str:
        """What ``sparsecascade list`` should say: trained (and where), or the note's first clause."""
        if self.trained:
            return "trained, in the package" if ships(self.name) else "trained"
        return self.note.split(":", 1)[0]


# The command that trains each GPU entry: the settings of zoo/<name>/recipe.md (the paper's, section 4),
# the ImageNet backbone from the Hub (timm's copy, sparsecascade.models.download_imagenet_weights), the
# data set from the folder its environment variable names (sparsecascade.data.datasets).
def _gpu_command(name: str, architecture: str, backbone: str, dataset: str, crop: int) -> str:
    weights = f"\"$(python -c 'import sparsecascade.models as m; print(m.download_imagenet_weights(\"{backbone}\"))')\""
    return (f"sparsecascade train --model {architecture} --dataset {dataset} "
            f"--data-root \"$SPARSECASCADE_{dataset.upper()}\" --backbone-weights {weights} "
            f"--mode lc --rho 0.985 --steps 30000 --dsn-steps 20000 --batch-size 16 --lr 0.01 "
            f"--crop-size {crop} {crop} --device cuda --out runs/{name}")


_GPU = {  # name: (architecture, ImageNet backbone, data set, crop)
    "lc-irnet-voc": ("lc_irnet", "irnet", "voc", 512),
    "lc-resnet101-voc": ("lc_resnet101", "resnet101", "voc", 512),
    "lc-vgg16-voc": ("lc_vgg16", "vgg16", "voc", 512),
    "lc-irnet-cityscapes": ("lc_irnet", "irnet", "cityscapes", 768),
    "lc-resnet101-cityscapes": ("lc_resnet101", "resnet101", "cityscapes", 768),
}
TRAIN_COMMANDS = {name: _gpu_command(name, *spec) for name, spec in _GPU.items()}
TRAIN_COMMANDS["lc-vgg16-camvid"] = (
    "bash zoo/lc-vgg16-camvid/experiment.sh weights && sparsecascade train --recipe recipes/camvid_lc_vgg16.json "
    "--data-root \"$SPARSECASCADE_CAMVID\" --device cuda --out runs/lc-vgg16-camvid")
TRAIN_COMMANDS["lc-resnet18-camvid"] = (
    "sparsecascade train --recipe recipes/camvid_lc_resnet18.json --data-root \"$SPARSECASCADE_CAMVID\" "
    "--device cuda --out runs/lc-resnet18-camvid")
_DATA = {"voc": "PASCAL VOC 2012 + SBD", "cityscapes": "Cityscapes"}


def _not_trained(name: str) -> str:
    dataset = _DATA[_GPU[name][2]]
    return (f"not trained yet: train it on a GPU with {dataset} (zoo/{name}/recipe.md): {TRAIN_COMMANDS[name]}; "
            f"then python zoo/publish.py runs/{name}/last.pt --name {name}")


# lc-vgg16-camvid is trained on this project's CPU (zoo/lc-vgg16-camvid/experiment.sh). It becomes
# trained -- and the default model -- when `experiment.sh publish` ships its weights into the package
# (zoo/publish.py --ship): `trained=ships(...)` below flips then, with no edit here.
_VGG16_CAMVID_TRAINING = (
    "being trained: zoo/lc-vgg16-camvid/experiment.sh trains it on this project's CPU, and its `publish` step "
    "ships the weights in the package; to train it on a GPU with CamVid: " + TRAIN_COMMANDS["lc-vgg16-camvid"])
# lc-resnet18-camvid leaves the package when lc-vgg16-camvid ships (zoo/retire.py, run by that `publish`).
_RESNET18_CAMVID_RETIRED = (
    "retired: its weights left the package when lc-vgg16-camvid replaced it (the repository holds one model's "
    "weights); what it measured stays in zoo/lc-resnet18-camvid/results.md. To train it again on a GPU with "
    "CamVid: " + TRAIN_COMMANDS["lc-resnet18-camvid"] + "; then python zoo/publish.py "
    "runs/lc-resnet18-camvid/last.pt --name lc-resnet18-camvid --ship")

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        *(ZooEntry(name, arch, "voc2012" if data == "voc" else data, 21 if data == "voc" else 19,
                   note=_not_trained(name), train_command=TRAIN_COMMANDS[name])
          for name, (arch, _, data, _) in _GPU.items()),
        # trained here, on a 2-core CPU: the weights ship with the package while the entry is trained
        ZooEntry("lc-vgg16-camvid", "lc_vgg16", "camvid", 11, trained=ships("lc-vgg16-camvid"),
                 note=("trained from the HED VGG-16 weights on a CPU: see zoo/lc-vgg16-camvid/results.md"
                       if ships("lc-vgg16-camvid") else _VGG16_CAMVID_TRAINING),
                 train_command=TRAIN_COMMANDS["lc-vgg16-camvid"]),
        ZooEntry("lc-resnet18-camvid", "lc_resnet18", "camvid", 11, trained=ships("lc-resnet18-camvid"),
                 note=("trained from scratch on a CPU: see zoo/lc-resnet18-camvid/results.md"
                       if ships("lc-resnet18-camvid") else _RESNET18_CAMVID_RETIRED),
                 train_command=TRAIN_COMMANDS["lc-resnet18-camvid"]),
    ]
}

# The model of `sparsecascade segment` / `export` without --model, of examples/quickstart.py and of the
# README's first command: the CamVid model whose weights ship in the package.
DEFAULT_MODEL = "lc-vgg16-camvid"


def list_pretrained(filter: str = "", trained_only: bool = False) -> list[str]:
    import fnmatch

    return sorted(n for n, e in ZOO.items()
                  if (not filter or fnmatch.fnmatch(n, filter)) and (e.trained or not trained_only))
