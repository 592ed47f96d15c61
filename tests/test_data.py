"""Data sets over tiny VOC / Cityscapes fixtures made here (good and broken layouts), the real CamVid
files, and the joint transforms against hand-computed results."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsecascade.data import (
    CamVid, Cityscapes, Normalize, RandomCrop, RandomHorizontalFlip, RandomScale, Resize, VOCSegmentation,
    build_dataset, eval_transform, resolve_root, train_transform, VOC_INFO, CITYSCAPES_INFO, CAMVID_INFO,
)
from conftest import camvid_root

CAMVID = camvid_root()


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    for var in ("SPARSECASCADE_DATA", "SPARSECASCADE_VOC", "SPARSECASCADE_CITYSCAPES", "SPARSECASCADE_CAMVID"):
        monkeypatch.delenv(var, raising=False)


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- PASCAL VOC -----------------------------------------------------------------------------------
def make_voc(root: Path, aug: bool = False) -> Path:
    """VOCdevkit/VOC2012 with 3 train + 2 val ids; palette PNG labels with 255 borders."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    ids = {"train": ["2007_000032", "2007_000039", "2008_000001"], "val": ["2007_000033", "2009_000002"]}
    palette = [v for c in VOC_INFO.palette for v in c] + [0] * 3 * (256 - 21)
    palette[255 * 3: 256 * 3] = [224, 224, 192]
    for split, names in ids.items():
        (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            Image.fromarray(_rgb(12, 16, k)).save(base / "JPEGImages" / f"{name}.jpg")
            label = np.zeros((12, 16), np.uint8)
            label[3:9, 4:12] = 5 + k
            label[3, 4:12] = 255
            im = Image.fromarray(label, mode="P")
            im.putpalette(palette)
            im.save(base / "SegmentationClass" / f"{name}.png")
    if aug:  # SBD: grey labels, DeepLab's two-column list with two extra images
        (base / "SegmentationClassAug").mkdir()
        (base / "ImageSets/SegmentationAug").mkdir()
        names = ids["train"] + ["2010_000005", "2011_000007"]
        for k, name in enumerate(names):
            if not (base / "JPEGImages" / f"{name}.jpg").exists():
                Image.fromarray(_rgb(12, 16, 10 + k)).save(base / "JPEGImages" / f"{name}.jpg")
            Image.fromarray(np.full((12, 16), 15, np.uint8)).save(base / "SegmentationClassAug" / f"{name}.png")
        (base / "ImageSets/SegmentationAug/train_aug.txt").write_text(
            "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in names))
    return root


def test_voc_reads_palette_labels(tmp_path):
    root = make_voc(tmp_path)
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 3 and ds.num_classes == 21 and ds.class_names[15] == "person"
    image, label = ds[1]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    want = np.zeros((12, 16), np.uint8)
    want[3:9, 4:12] = 6
    want[3, 4:12] = 255
    np.testing.assert_array_equal(label, want)  # palette indices, 255 kept as ignore
    np.testing.assert_array_equal(image, np.asarray(Image.open(root / "VOCdevkit/VOC2012/JPEGImages/2007_000039.jpg")))
    assert len(VOCSegmentation(root / "VOCdevkit" / "VOC2012", "val")) == 2  # the VOC2012 folder itself
    assert len(VOCSegmentation(root / "VOCdevkit", "val")) == 2
    assert VOCSegmentation.train_split(root) == "train"


def test_voc_train_aug_when_present(tmp_path):
    root = make_voc(tmp_path, aug=True)
    assert VOCSegmentation.train_split(root) == "train_aug"
    ds = build_dataset("voc", None, root)
    assert ds.split == "train_aug" and len(ds) == 5
    assert [p[0].stem for p in ds.pairs][-1] == "2011_000007"
    assert (ds[4][1] == 15).all()
    assert build_dataset("voc", "train", root).split == "train"  # explicit split stays


def test_voc_root_from_environment(tmp_path, monkeypatch):
    root = make_voc(tmp_path / "data" / "voc")
    monkeypatch.setenv("SPARSECASCADE_DATA", str(tmp_path / "data"))
    assert len(VOCSegmentation(split="val")) == 2
    monkeypatch.setenv("SPARSECASCADE_VOC", str(root / "VOCdevkit"))  # the per-data-set variable wins
    assert resolve_root(VOC_INFO) == root / "VOCdevkit"


def test_no_root_names_the_variables():
    with pytest.raises(ValueError, match="SPARSECASCADE_VOC.*SPARSECASCADE_DATA"):
        VOCSegmentation(split="train")


@pytest.mark.parametrize("breakage, match", [
    ("no_jpeg_dir", r"JPEGImages"),
    ("missing_label", r"missing 1: 2007_000039\.png"),
    ("no_list", r"expected the split list val\.txt"),
    ("colour_label", r"single-channel label map"),
    ("bad_value", r"unexpected label values \[30\]"),
    ("size_mismatch", r"label is 8x6 but its image"),
    ("not_voc", r"expected VOCdevkit/VOC2012"),
])
def test_voc_broken_layouts(tmp_path, breakage, match):
    root = make_voc(tmp_path / "d")
    base = root / "VOCdevkit" / "VOC2012"
    split = "train"
    if breakage == "no_jpeg_dir":
        shutil.rmtree(base / "JPEGImages")
    elif breakage == "missing_label":
        (base / "SegmentationClass" / "2007_000039.png").unlink()
    elif breakage == "no_list":
        (base / "ImageSets/Segmentation/val.txt").unlink()
        split = "val"
    elif breakage == "colour_label":
        Image.fromarray(_rgb(12, 16, 0)).save(base / "SegmentationClass" / "2007_000032.png")
    elif breakage == "bad_value":
        Image.fromarray(np.full((12, 16), 30, np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    elif breakage == "size_mismatch":
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    elif breakage == "not_voc":
        root = tmp_path / "empty"
        root.mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        ds = VOCSegmentation(root, split)
        ds[0]


def test_voc_bad_split_and_missing_aug(tmp_path):
    root = make_voc(tmp_path)
    with pytest.raises(ValueError, match="split: expected"):
        VOCSegmentation(root, "test")
    with pytest.raises(FileNotFoundError, match="train_aug.*SBD list"):
        VOCSegmentation(root, "train_aug")


# -- Cityscapes -----------------------------------------------------------------------------------
LABEL_IDS = np.array([[0, 7, 8, 9], [11, 17, 24, 26], [31, 32, 33, 3]], np.uint8)
TRAIN_IDS = np.array([[255, 0, 1, 255], [2, 5, 11, 13], [16, 17, 18, 255]], np.uint8)  # cityscapesScripts' table


def make_cityscapes(root: Path) -> Path:
    for split, cities in (("train", {"aachen": 2, "bremen": 1}), ("val", {"frankfurt": 1})):
        for city, n in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                Image.fromarray(_rgb(3, 4, i)).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                Image.fromarray(LABEL_IDS).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
                # the other gtFine files must not be mistaken for labels
                Image.fromarray(np.zeros((3, 4), np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    ds = Cityscapes(make_cityscapes(tmp_path), "train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.class_names[13] == "car"
    assert [p[0].parent.name for p in ds.pairs] == ["aachen", "aachen", "bremen"]
    image, label = ds[2]
    np.testing.assert_array_equal(label, TRAIN_IDS)
    assert image.shape == (3, 4, 3)
    assert len(Cityscapes(tmp_path, "val")) == 1


@pytest.mark.parametrize("breakage, match", [
    ("no_gtfine", r"gtFine/train"),
    ("missing_label", r"missing 1: bremen/bremen_000000_000019_gtFine_labelIds\.png"),
    ("no_images", r"expected city folders"),
    ("label_id_34", r"unexpected label values \[34\]"),
])
def test_cityscapes_broken_layouts(tmp_path, breakage, match):
    root = make_cityscapes(tmp_path)
    if breakage == "no_gtfine":
        shutil.rmtree(root / "gtFine")
    elif breakage == "missing_label":
        (root / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png").unlink()
    elif breakage == "no_images":
        for f in (root / "leftImg8bit/train").rglob("*.png"):
            f.unlink()
    elif breakage == "label_id_34":
        Image.fromarray(np.full((3, 4), 34, np.uint8)).save(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        Cityscapes(root, "train")[0]


# -- CamVid (the real files) ----------------------------------------------------------------------
needs_camvid = pytest.mark.skipif(not (CAMVID / "train").is_dir(),
                                  reason=f"CamVid not found at {CAMVID} (set SPARSECASCADE_CAMVID)")


@needs_camvid
def test_camvid_real_files():
    train, val = CamVid(CAMVID, "train"), CamVid(CAMVID, "val")
    assert (len(train), len(val)) == (367, 101) and train.num_classes == 11
    image, label = train[0]
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    raw = np.asarray(Image.open(train.pairs[0][1]))
    assert (raw == 11).any(), "the first training label should hold some void"
    np.testing.assert_array_equal(label[raw == 11], 255)
    np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])
    assert set(np.unique(label)) <= set(range(11)) | {255}


@needs_camvid
def test_camvid_training_samples_are_reproducible():
    t = train_transform((64, 80), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), scale_range=(0.25, 0.5))
    ds = CamVid(CAMVID, "train", transform=t, seed=3)
    x, y = ds[(2, 5)]
    assert x.shape == (3, 64, 80) and x.dtype == torch.float32 and y.shape == (64, 80) and y.dtype == torch.int64
    x2, y2 = CamVid(CAMVID, "train", transform=t, seed=3)[(2, 5)]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = ds[(3, 5)]  # another epoch: another augmentation
    assert not torch.equal(x, x3)


def test_camvid_broken_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"trainannot/\*\.png"):
        CamVid(tmp_path, "train")
    (tmp_path / "trainannot").mkdir()
    Image.fromarray(_rgb(4, 4, 0)).save(tmp_path / "train" / "a.png")
    with pytest.raises(FileNotFoundError, match="missing 1: a.png"):
        CamVid(tmp_path, "train")
    Image.fromarray(np.full((4, 4), 12, np.uint8)).save(tmp_path / "trainannot" / "a.png")
    with pytest.raises(ValueError, match=r"unexpected label values \[12\]"):
        CamVid(tmp_path, "train")[0]
    with pytest.raises(ValueError, match="dataset: expected one of"):
        build_dataset("ade20k", "train", tmp_path)


def test_dataset_infos():
    for info, n in ((VOC_INFO, 21), (CITYSCAPES_INFO, 19), (CAMVID_INFO, 11)):
        assert info.num_classes == n and len(info.palette) == n and info.ignore_index == 255
    assert VOC_INFO.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0)) and VOC_INFO.palette[15] == (192, 128, 128)


# -- transforms -----------------------------------------------------------------------------------
def test_crop_pads_with_ignore_and_mean_colour():
    image = np.full((2, 3, 3), 7, np.uint8)
    label = np.arange(6, dtype=np.uint8).reshape(2, 3)
    x, y = RandomCrop((4, 5), fill=(1, 2, 3))(image, label, np.random.default_rng(0))
    want = np.full((4, 5), 255, np.uint8)
    want[:2, :3] = label  # padded at the bottom and right only: the crop window is then the whole map
    np.testing.assert_array_equal(y, want)
    assert (x[:2, :3] == 7).all() and (x[2:, :] == [1, 2, 3]).all() and (x[:, 3:] == [1, 2, 3]).all()


def test_crop_window_follows_the_rng():
    label = np.arange(30, dtype=np.uint8).reshape(5, 6)
    image = np.repeat(label[..., None], 3, 2)
    rng = np.random.default_rng(4)
    ref = np.random.default_rng(4)
    top, left = int(ref.integers(0, 5 - 3 + 1)), int(ref.integers(0, 6 - 2 + 1))
    x, y = RandomCrop((3, 2))(image, label, rng)
    np.testing.assert_array_equal(y, label[top: top + 3, left: left + 2])
    np.testing.assert_array_equal(x[..., 0], y)


def test_flip_scale_normalize_resize():
    label = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    image = np.repeat(label[..., None] * 10, 3, 2).astype(np.uint8)
    flip = RandomHorizontalFlip(1.0)
    x, y = flip(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(y, label[:, ::-1])
    x, y = RandomHorizontalFlip(0.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(y, label)
    # scale: nearest for labels (no new values), size from the drawn factor
    rng_ref = np.random.default_rng(1)
    s = rng_ref.uniform(1.5, 3.0)
    x, y = RandomScale(1.5, 3.0)(image, label, np.random.default_rng(1))
    assert y.shape == (round(2 * s), round(3 * s)) and x.shape[:2] == y.shape
    assert set(np.unique(y)) <= set(label.flat)
    # normalise: (x / 255 - mean) / std at a pixel, int64 labels
    xt, yt = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(image, label, None)
    assert xt.shape == (3, 2, 3) and yt.dtype == torch.int64 and torch.equal(yt, torch.from_numpy(label).long())
    v = 50 / 255
    torch.testing.assert_close(xt[:, 1, 1], torch.tensor([(v - 0.5) / 0.5, (v - 0.25) / 0.25, v / 2.0]))
    # eval resize: the image to the size, the label untouched
    x, y = Resize((4, 6))(image, label, None)
    assert x.shape == (4, 6, 3) and y is label
    x, y = eval_transform((0, 0, 0), (1, 1, 1), size=4)(image, label, None)
    assert x.shape == (3, 4, 6) and y.shape == (2, 3)
    with pytest.raises(ValueError, match="crop_size"):
        RandomCrop((0, 3))
    with pytest.raises(ValueError, match="scale range"):
        RandomScale(2.0, 1.0)


def test_train_transform_is_a_function_of_the_rng():
    image = _rgb(20, 30, 0)
    label = np.random.default_rng(1).integers(0, 11, (20, 30)).astype(np.uint8)
    t = train_transform((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    a = t(image, label, np.random.default_rng([0, 1, 2]))
    b = t(image, label, np.random.default_rng([0, 1, 2]))
    c = t(image, label, np.random.default_rng([0, 1, 3]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)


def test_every_camvid_test_reads_the_environment_variable(tmp_path):
    """The README: the CamVid tests read $SPARSECASCADE_CAMVID (else ../shared/data/camvid)."""
    import subprocess
    import sys

    code = ("import test_data, test_models, test_zoo_camvid; "
            "print(test_data.CAMVID, test_models.CAMVID, test_zoo_camvid.CAMVID)")
    env = dict(os.environ, SPARSECASCADE_CAMVID=str(tmp_path / "elsewhere"), PYTHONPATH=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "elsewhere")] * 3
