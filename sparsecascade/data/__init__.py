"""Segmentation data sets (VOC 2012 + SBD, Cityscapes, CamVid): their classes (``classes``), their
folder layouts (``datasets``), their joint transforms (``transforms``), and reading any image as
8-bit RGB (``images``)."""
from .classes import CAMVID_INFO, CITYSCAPES_INFO, IGNORE_INDEX, VOC_INFO, DatasetInfo
from .datasets import (
    DATA_ENV,
    DATASETS,
    CamVid,
    Cityscapes,
    SegmentationDataset,
    VOCSegmentation,
    build_dataset,
    dataset_class,
    resolve_root,
)
from .images import array_to_rgb, read_image, to_rgb
from .transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    eval_transform,
    train_transform,
)

__all__ = [
    "IGNORE_INDEX", "DATA_ENV", "DATASETS", "DatasetInfo", "VOC_INFO", "CITYSCAPES_INFO", "CAMVID_INFO",
    "SegmentationDataset", "VOCSegmentation", "Cityscapes", "CamVid", "build_dataset", "dataset_class",
    "resolve_root",
    "Compose", "RandomScale", "RandomCrop", "RandomHorizontalFlip", "Resize", "Normalize",
    "train_transform", "eval_transform", "read_image", "to_rgb", "array_to_rgb",
]
