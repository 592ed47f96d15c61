"""What a model, the metrics and the pictures need to know about each data set's classes: their names,
colours and ignore index (``DatasetInfo``), and how Cityscapes' label ids map to its train ids.

Labels hold *train ids*: ``0 .. num_classes - 1`` for the classes and ``IGNORE_INDEX`` (255) for
pixels that count in neither the loss nor the metrics, one ignore index for every data set.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the metrics need to know about a data set's classes."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB colour of each train id, for visualisation
    env_var: str  # the per-data-set environment variable naming its root
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """PASCAL VOC's colour map: the bits of the class id spread over the high bits of R, G, B."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


VOC_INFO = DatasetInfo(
    "voc",
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
     "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    voc_palette(21),
    "SPARSECASCADE_VOC",
)

CITYSCAPES_INFO = DatasetInfo(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
     (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    "SPARSECASCADE_CITYSCAPES",
)

CAMVID_INFO = DatasetInfo(
    "camvid",
    ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car", "pedestrian",
     "bicyclist"),
    # the SegNet tutorial's colours
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    "SPARSECASCADE_CAMVID",
)

# Cityscapes label id -> train id (cityscapesScripts' labels.py); ids not listed are ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
