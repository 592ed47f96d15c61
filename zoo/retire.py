"""Take a zoo model's weights out of the package when another replaces it (the tree's size limit).

    python zoo/retire.py lc-resnet18-camvid --replaced-by lc-vgg16-camvid [--dry-run]

git tracks one copy of each shipped weights file, and the tracked tree must stay under ~60 MB (the
GPU machine takes a checkout only under 64 MiB): the package holds one CamVid model at a time. This

1. refuses unless ``--replaced-by`` already ships in the package (never leave it without a model);
2. ``git rm``'s ``sparsecascade/weights/<name>/`` (staged: commit it with the new model's weights);
   ``sparsecascade.zoo`` then reports the entry as retired (``ships(name)`` is False), and loading
   it fails with a message that points to its results and the command that trains it again;
3. rewrites the status block of ``zoo/<name>/README.md`` (between ``<!-- status:begin -->`` and
   ``<!-- status:end -->``) to say so and point to results.md;
4. prints the size of the tracked tree.

The results (results.md, results/) stay. Running it again changes nothing.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS_BEGIN, STATUS_END = "<!-- status:begin -->", "<!-- status:end -->"
TREE_LIMIT = 60_000_000  # bytes: the device tool carries a checkout only under 64 MiB


def retired_status(name: str, replaced_by: str) -> str:
    return (f"{STATUS_BEGIN}\n**Retired from the package.** Its weights left `sparsecascade/weights/` when "
            f"[`{replaced_by}`](../{replaced_by}/README.md) replaced it as the shipped CamVid model (git holds one "
            f"model's weights: the tree must stay under 60 MB). `sparsecascade.from_pretrained(\"{name}\")` now fails "
            f"with a message saying so and naming the command that trains it again ([recipe.md](recipe.md)). "
            f"Everything it measured, with the commands, stays in [results.md](results.md) and [`results/`](results).\n"
            f"{STATUS_END}")


def git(root: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check).stdout


def tracked_bytes(root: Path) -> int:
    """What a checkout will weigh: the tracked files, plus the new files of the package's weights and of
    zoo/ that are not ignored (a model just published, not yet added), at their working-tree sizes."""
    names = set(git(root, "ls-files", "-z").split("\0"))
    names |= set(git(root, "ls-files", "-z", "--others", "--exclude-standard", "--", "sparsecascade/weights", "zoo")
                 .split("\0"))
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the zoo entry whose weights leave the package")
    parser.add_argument("--replaced-by", required=True, metavar="NAME", help="the entry that ships instead")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    weights = root / "sparsecascade" / "weights"
    if not (weights / args.replaced_by / "model.safetensors").is_file():
        parser.error(f"--replaced-by: {args.replaced_by} does not ship in the package ({weights / args.replaced_by}); "
                     f"publish it first (zoo/publish.py ... --ship): retiring {args.name} now would leave no model")
    card = root / "zoo" / args.name / "README.md"
    text = card.read_text()
    if STATUS_BEGIN not in text or STATUS_END not in text:
        parser.error(f"{card}: expected a status block between {STATUS_BEGIN} and {STATUS_END}")

    folder = weights / args.name
    if folder.exists():
        rel = folder.relative_to(root).as_posix()
        tracked = git(root, "ls-files", "--", rel).split()
        print(f"{'would remove' if args.dry_run else 'removing'} {rel} ({len(tracked)} tracked files)")
        if not args.dry_run:
            if tracked:
                git(root, "rm", "-r", "-q", "--", rel)
            if folder.exists():
                shutil.rmtree(folder)
    else:
        print(f"{folder.relative_to(root)}: already gone")
    start, end = text.index(STATUS_BEGIN), text.index(STATUS_END) + len(STATUS_END)
    new = text[:start] + retired_status(args.name, args.replaced_by) + text[end:]
    if new != text:
        print(f"{'would update' if args.dry_run else 'updated'} {card.relative_to(root)}: retired")
        if not args.dry_run:
            card.write_text(new)
    size = tracked_bytes(root)
    print(f"tracked tree: {size / 1e6:.1f} MB (limit {TREE_LIMIT / 1e6:.0f} MB)"
          + ("" if size < TREE_LIMIT else ": STILL OVER, see `git ls-files | xargs du -b | sort -n`"))
    return 0 if size < TREE_LIMIT or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
