"""The model zoo: published LC models, their Hub repositories and their state of training.

Each entry names its architecture (a ``create_model`` name), data set and Hub repository, and
points to ``zoo/<name>/`` in the repository (model card, training recipe, measured results).
An entry whose weights have not been trained says so, and loading it fails with that message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HUB_ORGANIZATION = "sparsecascade"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    architecture: str
    dataset: str
    num_classes: int
    trained: bool = False
    revision: Optional[str] = None  # pinned Hub revision once published
    note: str = ""

    @property
    def repo_id(self) -> str:
        return f"{HUB_ORGANIZATION}/{self.name}"


_NOT_TRAINED = "not trained yet: training it needs a GPU and the data set (see zoo/{name}/recipe.md)"

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("lc-irnet-voc", "lc_irnet", "voc2012", 21, note=_NOT_TRAINED),
        ZooEntry("lc-resnet101-voc", "lc_resnet101", "voc2012", 21, note=_NOT_TRAINED),
        ZooEntry("lc-vgg16-voc", "lc_vgg16", "voc2012", 21, note=_NOT_TRAINED),
        ZooEntry("lc-irnet-cityscapes", "lc_irnet", "cityscapes", 19, note=_NOT_TRAINED),
        ZooEntry("lc-resnet101-cityscapes", "lc_resnet101", "cityscapes", 19, note=_NOT_TRAINED),
        # trained here, on a 2-core CPU (zoo/lc-resnet18-camvid/results.md); the weights ship with the package
        ZooEntry("lc-resnet18-camvid", "lc_resnet18", "camvid", 11, trained=True,
                 note="trained from scratch on a CPU: see zoo/lc-resnet18-camvid/results.md"),
    ]
}


def list_pretrained(filter: str = "", trained_only: bool = False) -> list[str]:
    import fnmatch

    return sorted(n for n, e in ZOO.items()
                  if (not filter or fnmatch.fnmatch(n, filter)) and (e.trained or not trained_only))
