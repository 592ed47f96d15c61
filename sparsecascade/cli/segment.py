"""``sparsecascade segment``: image files, folders and globs in; per image a palette label PNG (its
pixel values are the class ids), an overlay and a map of the stage each pixel stopped at. Images of
one size are segmented together, ``--batch-size`` at a time."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import default_model, device_name, load_model, positive_int, rho_value

HELP = "segment images: colour labels, overlay and stage map PNGs"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--model", default=default_model(), metavar="NAME",
                   help="zoo name, Hub repo id or save_pretrained folder (default: %(default)s)")
    p.add_argument("--rho", type=rho_value, help="confidence threshold in [0, 1], or one per stage but the last "
                   "joined by '/' (0.9/0.5) (default: the model's)")
    p.add_argument("--out", default="segment_out", metavar="DIR", help="where the PNGs go (default: %(default)s)")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=8, metavar="N",
                   help="images of one size segmented together, N at a time (default: %(default)s)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (default: %(default)s)")


def expand_images(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted) and globs -> (image paths, each file once; problems)."""
    import glob

    found, problems = [], []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item))
            found += [m for m in matches if m.is_file()]
            if not matches:
                problems.append(f"{item}: no file matches")
        elif path.is_dir():
            images = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            found += images
            if not images:
                problems.append(f"{item}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{item}: no such file or folder")
    unique = {}
    for path in found:  # a file named twice (a folder and a glob, a/../a/x.png) is processed once
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), problems


def output_stems(images: list[Path]) -> list[Path]:
    """Per image, the stem of its outputs under --out, one per image: its file stem; where stems clash,
    its path from the clashing images' common folder (a/x.png, b/x.png -> a/x, b/x); where that still
    clashes, the extension too (y.png, y.jpg -> y_png, y_jpg); then a number."""
    import os
    from collections import Counter

    resolved = [p.resolve() for p in images]
    stems = [Path(p.stem) for p in resolved]
    for stem, n in Counter(stems).items():
        if n > 1:
            group = [i for i, other in enumerate(stems) if other == stem]
            base = Path(os.path.commonpath([resolved[i].parent for i in group]))
            for i in group:
                stems[i] = resolved[i].relative_to(base).with_suffix("")
    counts = Counter(stems)
    for i, stem in enumerate(stems):
        if counts[stem] > 1:
            stems[i] = stem.with_name(f"{stem.name}_{resolved[i].suffix.lstrip('.')}")
    taken: set = set()
    for i, stem in enumerate(stems):
        n, unique = 1, stem
        while unique in taken:
            n += 1
            unique = stem.with_name(f"{stem.name}_{n}")
        stems[i] = unique
        taken.add(unique)
    return stems


def _image_size(path: Path):
    """(height, width) of an image file as segment reads it (upright per its EXIF orientation), from
    its header alone; None when the header does not tell (the file is read, and refused, later)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (any unreadable header: the full read reports it)
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)  # 5-8: turned a quarter


def batches_of_one_size(paths: list[Path], batch_size: int) -> list[list[Path]]:
    """The images in groups of one size (by their headers; an unreadable one alone), ``batch_size`` at
    most each, in the order of each size's first image."""
    groups: dict = {}
    for i, path in enumerate(paths):
        size = _image_size(path)
        groups.setdefault(size if size is not None else ("unread", i), []).append(path)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def run(args: argparse.Namespace) -> int:
    from ..segment import load_image, segment

    model = load_model(args.model, "--model", rho=args.rho, device=args.device)
    images, problems = expand_images(args.images)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    out = Path(args.out)
    failed = len(problems)
    stems = dict(zip(images, output_stems(images)))
    for batch in batches_of_one_size(images, args.batch_size):
        loaded = []
        for path in batch:
            try:
                loaded.append((path, load_image(path)))
            except (ValueError, OSError) as e:
                print(f"skipped {path}: {e}", file=sys.stderr)
                failed += 1
        if not loaded:
            continue
        results = segment(model, [rgb for _, rgb in loaded], batch_size=args.batch_size)
        for (path, _), result in zip(loaded, results):
            stem = out / stems[path]
            stem.parent.mkdir(parents=True, exist_ok=True)
            result.label_image().save(f"{stem}_labels.png")  # palette PNG: its pixel values are the class ids
            result.overlay().save(f"{stem}_overlay.png")
            result.stage_picture().save(f"{stem}_stages.png")
            shares = " / ".join(f"{100 * f:.1f}%" for f in result.stop_fractions)
            print(f"{path}: {result.ms:.0f} ms, decided at stages 1/2/3: {shares} -> {stem}_{{labels,overlay,stages}}.png")
    return 1 if failed else 0
