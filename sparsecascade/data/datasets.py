"""Segmentation data sets over their standard folder layouts: PASCAL VOC 2012 (+SBD), Cityscapes, CamVid.

Every data set yields ``(image, label)`` where the label holds *train ids*: ``0 .. num_classes - 1``
for the classes and ``IGNORE_INDEX`` (255) for pixels that count in neither the loss nor the
metrics, so all data sets share one ignore index. Without a transform, ``image`` is a uint8
array (H, W, 3) and ``label`` a uint8 array (H, W); a transform (``sparsecascade.data.transforms``)
turns them into tensors.

Random transforms draw from ``numpy.random.default_rng([seed, epoch, index])``: a sample's
augmentation depends only on the data set's seed, the epoch and its index, never on the worker
that loads it or on what was loaded before, so a resumed run sees exactly the same samples.
Index a data set with ``ds[i]`` (epoch 0) or ``ds[(epoch, i)]`` (what the training sampler does).

Where the data live comes from the ``root`` argument, else the per-data-set environment variable
(``SPARSECASCADE_VOC``, ``SPARSECASCADE_CITYSCAPES``, ``SPARSECASCADE_CAMVID``), else
``$SPARSECASCADE_DATA/<name>`` (``voc``, ``cityscapes``, ``camvid``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .classes import CAMVID_INFO, CITYSCAPES_INFO, CITYSCAPES_TRAIN_IDS, IGNORE_INDEX, VOC_INFO, DatasetInfo
from .classes import voc_palette  # noqa: F401  (also named here: sparsecascade.data.datasets.voc_palette)
from .images import read_image

DATA_ENV = "SPARSECASCADE_DATA"

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]
PathLike = Union[str, os.PathLike]


def _lookup(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry raw value -> train id table (ignore where unmapped)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def _valid(values: Sequence[int]) -> np.ndarray:
    ok = np.zeros(256, dtype=bool)
    ok[list(values)] = True
    return ok


# -- data roots -----------------------------------------------------------------------------------
def resolve_root(info: DatasetInfo, root: Optional[PathLike] = None) -> Path:
    """The data set's root: ``root``, else ``$<info.env_var>``, else ``$SPARSECASCADE_DATA/<info.name>``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    if os.environ.get(info.env_var):
        return Path(os.environ[info.env_var]).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser() / info.name
    raise ValueError(
        f"root: no data folder given for {info.name!r}; pass root= (--data-root on the command line) "
        f"or set {info.env_var}=<folder> or {DATA_ENV}=<folder holding {info.name}/>")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected {what}, but the folder does not exist")
    return path


def _pairs_error(folder: Path, missing: list[str], what: str) -> FileNotFoundError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return FileNotFoundError(f"{folder}: expected {what}; missing {len(missing)}: {shown}")


# -- the common part ------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """(image file, label file) pairs, read with PIL, labels mapped to train ids through ``lut``."""

    info: DatasetInfo
    lut: np.ndarray  # raw label value -> train id
    valid_raw: np.ndarray  # bool per raw label value: the values a label file may contain

    def __init__(self, pairs: list[tuple[Path, Path]], split: str, root: Path,
                 transform: Optional[Transform] = None, seed: int = 0):
        if not pairs:
            raise FileNotFoundError(f"{root}: split {split!r} holds no images")
        self.pairs = pairs
        self.split = split
        self.root = root
        self.transform = transform
        self.seed = int(seed)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def ignore_index(self) -> int:
        return self.info.ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw sample: RGB uint8 (H, W, 3) and train ids uint8 (H, W)."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path, exif=False)  # labels are drawn on the stored pixels, not the EXIF view
        with Image.open(label_path) as lab:
            raw = np.asarray(lab)
        if raw.ndim != 2:
            raise ValueError(f"{label_path}: expected a single-channel label map (index or palette PNG), "
                             f"got an array of shape {raw.shape} (a colour-coded label image?)")
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]} but its image "
                             f"{image_path.name} is {image.shape[1]}x{image.shape[0]}")
        bad = ~self.valid_raw[raw]
        if bad.any():
            raise ValueError(f"{label_path}: unexpected label values {sorted(set(np.unique(raw[bad]).tolist()))} "
                             f"for {self.info.name} (expected {np.flatnonzero(self.valid_raw).tolist()})")
        return image, self.lut[raw]

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.load(int(index))
        if self.transform is None:
            return image, label
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return self.transform(image, label, rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


# -- PASCAL VOC 2012 ------------------------------------------------------------------------------
class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 segmentation: ``root`` is ``VOCdevkit/VOC2012`` or the folder holding ``VOCdevkit``.

    Splits ``train``, ``val``, ``trainval`` read ``ImageSets/Segmentation/<split>.txt`` and
    ``SegmentationClass/`` (palette PNGs; 255 marks object boundaries). ``train_aug`` is the SBD
    augmented training set (10,582 images): labels in ``SegmentationClassAug/`` and the list in
    ``ImageSets/SegmentationAug/train_aug.txt`` (or ``ImageSets/Segmentation/train_aug.txt`` /
    ``aug.txt``); a list line is an id or DeepLab's ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``.
    """

    info = VOC_INFO
    lut = _lookup({i: i for i in range(21)})
    valid_raw = _valid(list(range(21)) + [255])
    AUG_LISTS = ("ImageSets/SegmentationAug/train_aug.txt", "ImageSets/Segmentation/train_aug.txt",
                 "ImageSets/Segmentation/aug.txt")

    def __init__(self, root: Optional[PathLike] = None, split: str = "train",
                 transform: Optional[Transform] = None, seed: int = 0):
        base = self.voc2012_folder(resolve_root(self.info, root))
        if split == "train_aug":
            list_file = self._aug_list(base)
            if list_file is None:
                raise FileNotFoundError(
                    f"{base}: split 'train_aug' expected the SBD list in one of {list(self.AUG_LISTS)}")
            label_dir = _require_dir(base / "SegmentationClassAug", "the SBD label maps (SegmentationClassAug/*.png)")
        elif split in ("train", "val", "trainval"):
            list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
            label_dir = _require_dir(base / "SegmentationClass", "the label maps (SegmentationClass/*.png)")
        else:
            raise ValueError(f"split: expected 'train', 'val', 'trainval' or 'train_aug', got {split!r}")
        if not list_file.is_file():
            raise FileNotFoundError(f"{list_file.parent}: expected the split list {list_file.name}")
        ids = [Path(line.split()[0]).stem for line in list_file.read_text().splitlines() if line.strip()]
        image_dir = _require_dir(base / "JPEGImages", "the images (JPEGImages/*.jpg)")
        pairs = [(image_dir / f"{i}.jpg", label_dir / f"{i}.png") for i in ids]
        missing = [p.name for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise _pairs_error(base, missing, f"an image in JPEGImages/ and a label in {label_dir.name}/ "
                                              f"for every id of {list_file.name}")
        super().__init__(pairs, split, base, transform, seed)

    @staticmethod
    def voc2012_folder(root: Path) -> Path:
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir() or (candidate / "ImageSets").is_dir():
                return candidate
        raise FileNotFoundError(f"{root}: expected VOCdevkit/VOC2012 (with JPEGImages/, SegmentationClass/ "
                                f"and ImageSets/Segmentation/) in it or to be that folder")

    @classmethod
    def _aug_list(cls, base: Path) -> Optional[Path]:
        for rel in cls.AUG_LISTS:
            if (base / rel).is_file():
                return base / rel
        return None

    @classmethod
    def train_split(cls, root: Optional[PathLike] = None) -> str:
        """``train_aug`` when the SBD labels and list are present, else ``train``."""
        base = cls.voc2012_folder(resolve_root(cls.info, root))
        has_aug = cls._aug_list(base) is not None and (base / "SegmentationClassAug").is_dir()
        return "train_aug" if has_aug else "train"


# -- Cityscapes -----------------------------------------------------------------------------------
class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``; label ids mapped to the 19 train ids."""

    info = CITYSCAPES_INFO
    lut = _lookup(CITYSCAPES_TRAIN_IDS)
    valid_raw = _valid(range(34))  # label ids 0..33 (license plate, -1, never appears in labelIds files)
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"

    def __init__(self, root: Optional[PathLike] = None, split: str = "train",
                 transform: Optional[Transform] = None, seed: int = 0):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        base = resolve_root(self.info, root)
        image_root = _require_dir(base / "leftImg8bit" / split, f"leftImg8bit/{split}/<city>/*{self.IMAGE_SUFFIX}")
        label_root = _require_dir(base / "gtFine" / split, f"gtFine/{split}/<city>/*{self.LABEL_SUFFIX}")
        images = sorted(image_root.glob(f"*/*{self.IMAGE_SUFFIX}"))
        if not images:
            raise FileNotFoundError(f"{image_root}: expected city folders holding *{self.IMAGE_SUFFIX} images")
        pairs = []
        for image in images:
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
            pairs.append((image, label_root / image.parent.name / f"{stem}{self.LABEL_SUFFIX}"))
        missing = [str(lab.relative_to(label_root)) for _, lab in pairs if not lab.is_file()]
        if missing:
            raise _pairs_error(label_root, missing, f"a *{self.LABEL_SUFFIX} label for every image")
        super().__init__(pairs, split, base, transform, seed)

    @classmethod
    def train_split(cls, root: Optional[PathLike] = None) -> str:
        return "train"


# -- CamVid ---------------------------------------------------------------------------------------
class CamVid(SegmentationDataset):
    """CamVid at 360x480 (SegNet's version): ``<split>/*.png`` images and ``<split>annot/*.png``
    label maps with the same names; 11 classes, label 11 (void) ignored (mapped to 255)."""

    info = CAMVID_INFO
    lut = _lookup({i: i for i in range(11)})
    valid_raw = _valid(range(12))

    def __init__(self, root: Optional[PathLike] = None, split: str = "train",
                 transform: Optional[Transform] = None, seed: int = 0):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        base = resolve_root(self.info, root)
        image_dir = _require_dir(base / split, f"the {split} images ({split}/*.png)")
        label_dir = _require_dir(base / f"{split}annot", f"the {split} label maps ({split}annot/*.png, same names)")
        images = sorted(image_dir.glob("*.png"))
        if not images:
            raise FileNotFoundError(f"{image_dir}: expected *.png images")
        pairs = [(image, label_dir / image.name) for image in images]
        missing = [lab.name for _, lab in pairs if not lab.is_file()]
        if missing:
            raise _pairs_error(label_dir, missing, "a label map with the name of every image")
        super().__init__(pairs, split, base, transform, seed)

    @classmethod
    def train_split(cls, root: Optional[PathLike] = None) -> str:
        return "train"


DATASETS: dict[str, type[SegmentationDataset]] = {"voc": VOCSegmentation, "cityscapes": Cityscapes, "camvid": CamVid}


def dataset_class(name: str) -> type[SegmentationDataset]:
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def build_dataset(name: str, split: Optional[str], root: Optional[PathLike] = None,
                  transform: Optional[Transform] = None, seed: int = 0) -> SegmentationDataset:
    """``build_dataset("camvid", "val", root)``; ``split=None`` is the data set's training split
    (VOC's ``train_aug`` when the SBD files are present, else ``train``)."""
    cls = dataset_class(name)
    if split is None:
        split = cls.train_split(root)
    return cls(root, split, transform=transform, seed=seed)
