"""Publish a trained LC model: checkpoint -> Hub folder (config, weights, card) -> upload.

    python zoo/publish.py runs/camvid_lc_resnet18/last.pt --name lc-resnet18-camvid \
        --results runs/camvid_lc_resnet18/eval/rho_sweep.json --dtype float16 [--ship] [--dry-run]

Writes ``zoo/<name>/hub/`` (what the Hub repository holds: config.json with the SHA-256 of the
weights, model.safetensors, README.md with the measured results), optionally copies it into the package (``--ship``: the
weights then load offline), and uploads it to ``sparsecascade/<name>`` when a token and a
network exist (``--dry-run`` never uploads). Re-running with the same inputs writes identical
files, and the Hub skips a commit without changes: publishing is idempotent.
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
from sparsecascade._atomic import atomic_write
from sparsecascade.hub import CHECKSUM_KEY, SHIPPED_DIR, save_pretrained

ZOO_DIR = Path(__file__).resolve().parent


def load_model(source: str):
    """A training checkpoint (``last.pt``) or a ``save_pretrained`` folder -> (model, dataset name)."""
    path = Path(source)
    if path.is_dir():
        model = sc.from_pretrained(path)
        return model, model.config.get("dataset")
    from sparsecascade.train import load_trained_model

    model, cfg = load_trained_model(path)
    return model, cfg.dataset


def summarize_results(path: Path, rho: float) -> dict:
    """The card's numbers: the sweep row at the published rho (mIoU, stops, ms) and the command."""
    data = json.loads(path.read_text())
    rows = data["results"] if isinstance(data, dict) and "results" in data else data
    row = min(rows, key=lambda r: abs(float(r["rho"]) - rho))
    if abs(float(row["rho"]) - rho) > 1e-9:
        raise SystemExit(f"--results: {path} has no row at rho = {rho:g} (it has {sorted(float(r['rho']) for r in rows)}); "
                         "evaluate the model at the rho being published")
    keep = {k: row[k] for k in ("rho", "miou", "stop_fractions", "ms_per_image", "mac_ratio") if k in row}
    if isinstance(data, dict) and data.get("command"):
        keep["command"] = data["command"]
    keep["source"] = str(path)
    return keep


def copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` so that a cut copy never ships: from_pretrained reads the package first."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda out: shutil.copyfileobj(source, out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="training checkpoint (last.pt) or save_pretrained folder")
    parser.add_argument("--name", required=True, choices=sorted(sc.zoo.ZOO), help="zoo entry")
    parser.add_argument("--results", type=Path, help="evaluation JSON (sparsecascade eval --rhos ...)")
    parser.add_argument("--rho", type=float, help="default rho to publish (default: the model's)")
    parser.add_argument("--shortest-edge", dest="shortest_edge", type=int, metavar="N",
                        help="segment() resizes images so that their shorter side has N pixels (the training scale)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--out", type=Path, help="the Hub folder to write (default: zoo/<name>/hub)")
    parser.add_argument("--ship", action="store_true", help="also copy into the package (offline weights)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, never upload")
    parser.add_argument("--token", default=os.environ.get("HF_TOKEN"))
    args = parser.parse_args(argv)

    entry = sc.zoo.ZOO[args.name]
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

    folder = args.out or ZOO_DIR / args.name / "hub"
    save_pretrained(model, folder, dtype=getattr(torch, args.dtype), results=results)
    size = (folder / "model.safetensors").stat().st_size
    sha = json.loads((folder / "config.json").read_text())[CHECKSUM_KEY]  # from_pretrained verifies the file by it
    print(f"wrote {folder} (weights {size / 2**20:.1f} MB, SHA-256 {sha})")
    if args.ship:
        target = SHIPPED_DIR / args.name
        target.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "README.md"):
            copy_atomically(folder / f, target / f)
        print(f"shipped in the package: {target}")
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
