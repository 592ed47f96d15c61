"""Publish a trained LC model: checkpoint -> Hub folder (config, weights, card) -> package -> upload.

    python zoo/publish.py runs/camvid_vgg16/lc_long/last.pt --name lc-vgg16-camvid --dtype float16 \
        --results zoo/lc-vgg16-camvid/results/lc_long/rho_sweep.json [--rho R] [--ship] [--dry-run]
    python zoo/publish.py --name lc-resnet18-camvid [--dry-run]   # the Hub folder of the shipped weights

From a checkpoint (or a save_pretrained folder): writes the Hub folder (config.json with the SHA-256
of the weights, model.safetensors, README.md: the measured results, then the sections of
``zoo/<name>/README.md`` between ``<!-- hub-card:begin -->`` and ``<!-- hub-card:end -->``:
provenance and licences), and with ``--ship`` copies it into the package
(``sparsecascade/weights/<name>/``: the weights then load offline).

Without a checkpoint: the package copy is the source: its files are checked against the SHA-256 in
its config.json and copied as they are into the Hub folder. git tracks that one copy only; the
Hub folder is a build output, ``build/hub/<name>/`` by default (untracked).

Then uploads the folder to ``sparsecascade/<name>`` when a token and a network exist (``--dry-run``
never uploads). Re-running with the same inputs writes identical files, and the Hub skips a commit
without changes: publishing is idempotent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

import sparsecascade as sc
from sparsecascade._atomic import atomic_write, atomic_write_text
from sparsecascade.hub import CARD_NAME, CHECKSUM_KEY, CONFIG_NAME, SHIPPED_DIR, WEIGHTS_NAME, file_sha256, save_pretrained
from sparsecascade.rho import Rho, check_rho, format_rho, parse_rho

ZOO_DIR = Path(__file__).resolve().parent
BUILD_DIR = ZOO_DIR.parent / "build" / "hub"  # untracked (.gitignore: build/)
FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
HUB_CARD_BEGIN, HUB_CARD_END = "<!-- hub-card:begin -->", "<!-- hub-card:end -->"


def load_model(source: str):
    """A training checkpoint (``last.pt``) or a ``save_pretrained`` folder -> (model, dataset name)."""
    path = Path(source)
    if path.is_dir():
        model = sc.from_pretrained(path)
        return model, model.config.get("dataset")
    from sparsecascade.train import load_trained_model

    model, cfg = load_trained_model(path)
    return model, cfg.dataset


def summarize_results(path: Path, rho: Rho) -> dict:
    """The card's numbers: the sweep row at the published rho (mIoU, stops, ms) and the command."""
    data = json.loads(path.read_text())
    rows = data["results"] if isinstance(data, dict) and "results" in data else data
    row = next((r for r in rows if check_rho(r["rho"]) == rho), None)
    if row is None:
        raise SystemExit(f"--results: {path} has no row at rho = {format_rho(rho)} (it has "
                         f"{', '.join(format_rho(r['rho']) for r in rows)}); evaluate the model at the rho being published")
    keep = {k: row[k] for k in ("rho", "miou", "stop_fractions", "ms_per_image", "mac_ratio") if k in row}
    if isinstance(data, dict) and data.get("command"):
        keep["command"] = data["command"]
    keep["source"] = str(path)
    return keep


def hub_card_sections(name: str) -> str:
    """The parts of ``zoo/<name>/README.md`` marked for the Hub card (provenance, licences), or ''."""
    card = ZOO_DIR / name / "README.md"
    text = card.read_text() if card.is_file() else ""
    parts = []
    while HUB_CARD_BEGIN in text and HUB_CARD_END in text.split(HUB_CARD_BEGIN, 1)[1]:
        inside, text = text.split(HUB_CARD_BEGIN, 1)[1].split(HUB_CARD_END, 1)
        parts.append(inside.strip())
    return "\n\n".join(parts)


def from_package(name: str, folder: Path) -> None:
    """The Hub folder from the package's copy (the one git tracks), checked against its SHA-256."""
    shipped = SHIPPED_DIR / name
    if not (shipped / WEIGHTS_NAME).is_file():
        raise SystemExit(f"{name}: the package holds no weights for it ({shipped}); publish it from its "
                         f"checkpoint: python zoo/publish.py runs/.../last.pt --name {name} --ship")
    expected = json.loads((shipped / CONFIG_NAME).read_text()).get(CHECKSUM_KEY)
    actual = file_sha256(shipped / WEIGHTS_NAME)
    if expected != actual:
        raise SystemExit(f"{shipped / WEIGHTS_NAME}: SHA-256 {actual}, but its config.json records {expected}: "
                         "the package copy is damaged; publish again from the checkpoint")
    folder.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        copy_atomically(shipped / f, folder / f)


def copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` so that a cut copy never ships: from_pretrained reads the package first."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda out: shutil.copyfileobj(source, out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?",
                        help="training checkpoint (last.pt) or save_pretrained folder; none: the package's copy")
    parser.add_argument("--name", required=True, choices=sorted(sc.zoo.ZOO), help="zoo entry")
    parser.add_argument("--results", type=Path, help="evaluation JSON (sparsecascade eval --rhos ...)")
    parser.add_argument("--rho", type=parse_rho, help="default rho to publish, or one per stage but the last "
                        "(0.9/0.5) (default: the model's)")
    parser.add_argument("--shortest-edge", dest="shortest_edge", type=int, metavar="N",
                        help="segment() resizes images so that their shorter side has N pixels (the training scale)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--out", type=Path, help="the Hub folder to write (default: build/hub/<name>, untracked)")
    parser.add_argument("--ship", action="store_true", help="also copy into the package (offline weights)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, never upload")
    parser.add_argument("--token", default=os.environ.get("HF_TOKEN"))
    args = parser.parse_args(argv)

    entry = sc.zoo.ZOO[args.name]
    folder = args.out or BUILD_DIR / args.name
    if args.source is None:
        given = [o for o, v in (("--results", args.results), ("--rho", args.rho), ("--shortest-edge", args.shortest_edge),
                                ("--ship", args.ship)) if v not in (None, False)]
        if given:
            parser.error(f"{', '.join(given)}: only with a checkpoint; without one the package's copy is published as it is")
        from_package(args.name, folder)
        print(f"wrote {folder} from the package's copy ({SHIPPED_DIR / args.name})")
        return upload(args, entry, folder)
    model, dataset = load_model(args.source)
    if model.config["architecture"] != entry.architecture or model.config["num_classes"] != entry.num_classes:
        parser.error(f"{args.source}: a {model.config['architecture']} with {model.config['num_classes']} classes, "
                     f"but {args.name} is a {entry.architecture} with {entry.num_classes}")
    if args.rho is not None:
        model.rho = args.rho
    from sparsecascade.data import CAMVID_INFO, CITYSCAPES_INFO, VOC_INFO

    dataset = dataset or entry.dataset
    info = {"camvid": CAMVID_INFO, "cityscapes": CITYSCAPES_INFO, "voc": VOC_INFO, "voc2012": VOC_INFO}.get(dataset)
    if info is not None:  # the card and model.segment() name and colour the classes
        model.config.update(class_names=list(info.class_names), palette=[list(c) for c in info.palette])
    model.config.update(name=args.name, dataset=dataset)
    if args.shortest_edge is not None:
        model.config["shortest_edge"] = args.shortest_edge
    results = summarize_results(args.results, model.rho) if args.results else None

    save_pretrained(model, folder, dtype=getattr(torch, args.dtype), results=results)
    extra = hub_card_sections(args.name)
    if extra:  # the weights' provenance and licences, from the zoo card
        atomic_write_text(folder / CARD_NAME, (folder / CARD_NAME).read_text().rstrip("\n") + "\n\n" + extra + "\n")
    size = (folder / WEIGHTS_NAME).stat().st_size
    sha = json.loads((folder / CONFIG_NAME).read_text())[CHECKSUM_KEY]  # from_pretrained verifies the file by it
    print(f"wrote {folder} (weights {size / 2**20:.1f} MiB, SHA-256 {sha})")
    if args.ship:
        target = SHIPPED_DIR / args.name
        target.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            copy_atomically(folder / f, target / f)
        print(f"shipped in the package: {target}")
    return upload(args, entry, folder)


def upload(args, entry, folder: Path) -> int:
    if args.dry_run or not args.token:
        print("dry run: nothing uploaded" if args.dry_run else "no HF_TOKEN / --token: nothing uploaded")
        return 0
    from huggingface_hub import HfApi

    api = HfApi(token=args.token)
    api.create_repo(entry.repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=entry.repo_id, folder_path=str(folder),
                               commit_message=f"Publish {args.name} with sparsecascade {sc.__version__}")
    print(f"uploaded to {entry.repo_id}: {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
