"""The ``sparsecascade`` command: one subcommand per job.

    sparsecascade train --recipe recipes/camvid_lc_resnet18.json [--steps 200 ...] [--resume]
    sparsecascade eval --checkpoint runs/x/last.pt [--rhos 0.8,0.9,0.985,1 | --budget 0.6]
    sparsecascade segment street.png photos/ "shots/*.jpg" [--model NAME] [--rho R] [--out DIR] [--batch-size N]
    sparsecascade list
    sparsecascade bench kernels|cascade|train_step [options]
    sparsecascade export [--model NAME] [--format torch onnx] [--out DIR]
    sparsecascade eval --pretrained my-model-folder --dataset camvid --data-root DIR

Data parallel, one machine or several (``--out`` on storage every machine sees, for ``--resume``):

    torchrun --nproc-per-node 4 -m sparsecascade.cli train --recipe ...
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        --rdzv-id lc -m sparsecascade.cli train --recipe ...        # the same line on each machine

A subcommand is an entry of ``COMMANDS``: name -> ``Command(help, add_arguments, run)``, where
``add_arguments(parser)`` declares its options and ``run(args)`` does the work and returns an exit
status. ``register_command`` adds one (``segment``, ``list``, ``bench`` ...).

Errors a user can cause (a bad option, a missing file, a damaged checkpoint, a configuration the
library refuses) print one line to stderr, ``sparsecascade <command>: error: ...``, and exit with
status 2; a diverged training run exits with 1; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

S = argparse.SUPPRESS  # "not given": a recipe's value, else the TrainConfig default, stays


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, add_arguments, run) -> None:
    COMMANDS[name] = Command(help, add_arguments, run)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _probabilities(text: str) -> list[float]:
    values = _floats(text)
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; CUDA only where this torch has it."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "is a CPU build" if torch.version.cuda is None else "sees no GPU"
        raise argparse.ArgumentTypeError(f"CUDA is not available (torch {torch.__version__} {why}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


# -- train ----------------------------------------------------------------------------------------
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="JSON", help="TrainConfig fields in a JSON file; options override it")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=S, metavar="NAME", help="lc_resnet18, lc_irnet, ... or package.module:function")
    g.add_argument("--model-kwargs", dest="model_kwargs", type=_json_object, default=S, metavar="JSON")
    g.add_argument("--backbone-weights", dest="backbone_weights", default=S, metavar="FILE",
                   help="ImageNet checkpoint for the backbone")
    g.add_argument("--bn-init-images", dest="bn_init_images", type=int, default=S, metavar="N",
                   help="from scratch: set the frozen BatchNorm statistics from N training images first")
    g.add_argument("--dataset", default=S, choices=["voc", "cityscapes", "camvid"], metavar="NAME",
                   help="voc, cityscapes or camvid")
    g.add_argument("--data-root", dest="data_root", default=S, metavar="DIR",
                   help="else $SPARSECASCADE_<DATASET> or $SPARSECASCADE_DATA/<dataset>")
    g.add_argument("--split", default=S, metavar="NAME", help="default: train (VOC: train_aug when present)")
    g.add_argument("--crop-size", dest="crop_size", type=int, nargs=2, default=S, metavar=("H", "W"))
    g.add_argument("--scale-range", dest="scale_range", type=float, nargs=2, default=S, metavar=("MIN", "MAX"))
    g.add_argument("--no-flip", dest="flip", action="store_false", default=S)
    g = p.add_argument_group("method")
    g.add_argument("--mode", default=S, choices=["plain", "dsn", "dsn_dropout", "model_cascade", "lc"],
                   metavar="MODE", help="lc (default), plain, dsn, dsn_dropout, model_cascade")
    g.add_argument("--rho", type=_probability, default=S, metavar="R", help="cascade threshold (default 0.985)")
    g.add_argument("--dsn-steps", dest="dsn_steps", type=int, default=S, metavar="N",
                   help="lc: DSN initial-training steps (default steps/2)")
    g.add_argument("--drop-ratios", dest="drop_ratios", type=_floats, default=S, metavar="R1,R2,R3",
                   help="dsn_dropout: per-stage label drop (default 0,0.23,0.52)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=S, metavar="N")
    g.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=S, metavar="N",
                   help="global, over all processes")
    g.add_argument("--lr", type=_positive_float, default=S, metavar="X", help="base learning rate (poly decay)")
    g.add_argument("--head-lr-mult", dest="head_lr_mult", type=float, default=S, metavar="X",
                   help="heads' lr multiplier (default 10)")
    g.add_argument("--momentum", type=float, default=S, metavar="X")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=S, metavar="X")
    g.add_argument("--poly-power", dest="poly_power", type=float, default=S, metavar="X")
    g.add_argument("--grad-clip", dest="grad_clip", type=float, default=S, metavar="X", help="max gradient norm")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no mixed precision on CUDA")
    g.add_argument("--seed", type=int, default=S, metavar="N")
    g = p.add_argument_group("run")
    g.add_argument("--out", dest="out_dir", default=S, metavar="DIR", help="checkpoint, log.jsonl, config.json")
    g.add_argument("--device", type=_device, default=S, metavar="DEV", help="auto (default), cpu, cuda")
    g.add_argument("--workers", type=int, default=S, metavar="N", help="data-loading processes")
    g.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads of torch (default: torch's)")
    g.add_argument("--ckpt-every", dest="ckpt_every", type=_positive_int, default=S, metavar="N")
    g.add_argument("--log-every", dest="log_every", type=_positive_int, default=S, metavar="N")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    g.add_argument("--resume", action="store_true", help="continue the run in DIR (last.pt, else previous.pt)")
    g.add_argument("--overwrite", action="store_true", help="start again from step 0 in a DIR that holds a run")
    g.add_argument("--stop-after", dest="stop_after", type=int, metavar="N",
                   help="end this run (checkpointed) after step N")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _set_threads(threads) -> None:
    """--threads: torch's intra-op threads (OMP_NUM_THREADS also works, set before starting)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def train_config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    values = {}
    if args.recipe:
        values.update(TrainConfig.from_json(args.recipe).to_dict())
    skip = {"recipe", "resume", "overwrite", "stop_after", "threads", "debug", "command", "func"}
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = train_config_from_args(args)
    _set_threads(args.threads)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after)
    if result.rank == 0:
        status = "finished" if result.finished else "stopped"
        print(f"{status} at step {result.step}/{cfg.steps}; checkpoint {result.checkpoint}")
    return 0


# -- eval -----------------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="FILE", help="a training checkpoint (DIR/last.pt)")
    which.add_argument("--pretrained", metavar="NAME", help="a save_pretrained folder, zoo name or Hub id")
    p.add_argument("--dataset", choices=["voc", "cityscapes", "camvid"], metavar="NAME",
                   help="voc, cityscapes, camvid (default: the training data set)")
    p.add_argument("--data-root", dest="data_root", metavar="DIR", help="default: as in training / env vars")
    p.add_argument("--split", default="val", metavar="NAME", help="default: val")
    p.add_argument("--rho", type=_probability, metavar="R",
                   help="default: 1 for plain/dsn/dsn_dropout, else the training rho")
    p.add_argument("--rhos", type=_probabilities, metavar="R1,R2,...", help="sweep: table (CSV, JSON) and plot (PNG)")
    p.add_argument("--budget", type=_positive_float, metavar="X",
                   help="calibrate: best mIoU with cost <= budget over --rhos")
    p.add_argument("--budget-kind", dest="budget_kind", choices=["macs", "ms"], default="macs", metavar="KIND",
                   help="macs: share of dense MACs; ms: ms per image")
    p.add_argument("--head", type=_positive_int, metavar="K", help="score stage K's head alone (every pixel stops there)")
    p.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), help="resize images (labels stay full size)")
    p.add_argument("--max-images", dest="max_images", type=_positive_int, metavar="N")
    p.add_argument("--device", type=_device, default="auto", metavar="DEV", help="auto (default), cpu, cuda")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="data-loading processes")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads of torch (default: torch's)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: beside the checkpoint, eval/)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from .data import build_dataset, eval_transform
    from .evaluate import DEFAULT_RHOS, calibrate_rho, evaluate, format_table, rho_sweep, save_sweep
    from .train import load_trained_model, model_normalization

    _set_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.checkpoint:
        model, cfg = load_trained_model(args.checkpoint, device)
        dataset, data_root = args.dataset or cfg.dataset, args.data_root if args.data_root is not None else cfg.data_root
        default_out = Path(args.checkpoint).parent / "eval"
    else:
        from .hub import from_pretrained

        if not args.dataset:
            raise ValueError("--dataset: --pretrained needs it (voc, cityscapes or camvid)")
        model = _load_model(args.pretrained, "--pretrained", device=device)
        dataset, data_root, default_out = args.dataset, args.data_root, Path("eval")
    mean, std = model_normalization(model)
    data = build_dataset(dataset, args.split, data_root, transform=eval_transform(mean, std, args.size))
    out_dir = Path(args.out) if args.out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = dict(max_images=args.max_images, workers=args.workers, progress=args.progress)
    if args.budget is not None:
        cal = calibrate_rho(model, data, budget=args.budget, budget_kind=args.budget_kind,
                            rhos=args.rhos or DEFAULT_RHOS, out_dir=out_dir, **kw)
        print(format_table(cal.curve))
        print(f"\ncalibrated: rho = {cal.rho:g} ({args.budget_kind} budget {args.budget:g})\n")
        print(cal.result.report())
        (out_dir / "calibration.json").write_text(json.dumps(
            dict(rho=cal.rho, budget=cal.budget, budget_kind=cal.budget_kind, result=cal.result.to_dict()),
            indent=2) + "\n")
    elif args.rhos:
        results = rho_sweep(model, data, args.rhos, **kw)
        print(format_table(results))
        written = save_sweep(results, out_dir)  # the plot only where matplotlib is installed
        print(f"\nwrote {written['csv']}, " + ", ".join(p.name for key, p in written.items() if key != "csv"))
    else:
        result = evaluate(model, data, rho=args.rho, head=args.head, **kw)
        print(result.report())
        name = "eval.json" if args.head is None else f"eval_head{args.head}.json"
        (out_dir / name).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"\nwrote {out_dir / name}")
    return 0


register_command("train", "train LC or a baseline (plain, dsn, dsn_dropout, model_cascade)",
                 add_train_arguments, run_train)
register_command("eval", "mIoU, stage statistics, ms/image; rho sweep; rho calibration",
                 add_eval_arguments, run_eval)


# -- segment, list, bench ------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def default_model() -> str:
    """The zoo model that segment and export use without --model (the zoo's DEFAULT_MODEL where it names one)."""
    from . import zoo

    return getattr(zoo, "DEFAULT_MODEL", "lc-resnet18-camvid")


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--model", default=default_model(), metavar="NAME",
                   help="zoo name, Hub repo id or save_pretrained folder (default: %(default)s)")
    p.add_argument("--rho", type=_probability, help="confidence threshold in [0, 1] (default: the model's)")
    p.add_argument("--out", default="segment_out", metavar="DIR", help="where the PNGs go (default: %(default)s)")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=8, metavar="N",
                   help="images of one size segmented together, N at a time (default: %(default)s)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (default: %(default)s)")


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


def _load_model(name: str, option: str, **kwargs):
    """from_pretrained, its errors naming the option the name came from."""
    from .hub import from_pretrained

    try:
        return from_pretrained(name, **kwargs)
    except (ValueError, RuntimeError, OSError) as e:
        raise ValueError(f"{option}: {str(e).removeprefix('name_or_path: ')}") from e


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


def run_segment(args: argparse.Namespace) -> int:
    from .segment import load_image, segment

    model = _load_model(args.model, "--model", rho=args.rho, device=args.device)
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


def run_list(args: argparse.Namespace) -> int:
    from .factory import list_models
    from .zoo import ZOO

    print("pretrained (sparsecascade.from_pretrained):")
    for name in sorted(ZOO):
        e = ZOO[name]
        print(f"  {name:<26} {e.architecture:<14} {e.dataset:<11} {e.repo_id:<38} "
              f"{e.status}")
    print("architectures (sparsecascade.create_model): " + ", ".join(list_models()))
    return 0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=["kernels", "cascade", "real", "train_step"])
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options (--help for them)")


def run_bench(args: argparse.Namespace) -> int:
    from .bench.__main__ import main as bench_main

    return int(bench_main([args.benchmark, *args.options]) or 0)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model(), metavar="NAME",
                   help="zoo name, Hub repo id or save_pretrained folder (default: %(default)s)")
    p.add_argument("--out", default="export_out", metavar="DIR",
                   help="where NAME.pt2, NAME.onnx and NAME.json (the preprocessing) go (default: %(default)s)")
    p.add_argument("--format", nargs="+", choices=["torch", "onnx"], metavar="FORMAT",
                   help="torch (torch.export .pt2) and/or onnx (default: both; onnx where it is installed)")
    p.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"),
                   help="example input size (default: the model's training scale, else 512 512)")
    p.add_argument("--batch", type=_positive_int, default=2, metavar="N",
                   help="example batch size (default: %(default)s; 1 fixes the batch size at 1)")
    p.add_argument("--static", action="store_true", help="fixed input shape (default: batch, H and W symbolic)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (default: %(default)s)")


def run_export(args: argparse.Namespace) -> int:
    """The dense path (rho = 1) as a static graph: see sparsecascade.export for why not the cascade."""
    import torch

    from .export import SUFFIXES, export_dense, onnx_available

    model = _load_model(args.model, "--model", device=args.device)
    formats = args.format or (["torch", "onnx"] if onnx_available() else ["torch"])
    if args.format is None and "onnx" not in formats:
        print("skipped ONNX: it needs the onnx and onnxscript packages (pip install 'sparsecascade[export]')")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    edge = cfg.get("shortest_edge") or 512
    height, width = args.size or (edge, edge)
    device = next(model.parameters()).device
    example = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    name = cfg.get("name") or Path(str(args.model).rstrip("/")).name
    out = Path(args.out)
    model.rho = 1.0
    with torch.no_grad():
        eager = model.eval()(example).logits
    for fmt in formats:
        path = out / f"{name}{SUFFIXES[fmt]}"
        program = export_dense(model, example, path, fmt, dynamic=not args.static)
        check = ""
        if fmt == "torch":
            with torch.no_grad():
                got = torch.export.load(path).module()(example)
            check = f", max |exported - eager| = {(got - eager).abs().max().item():.2g}"
        print(f"wrote {path} ({fmt}{'' if args.static else ', dynamic batch/H/W'}{check})")
        del program
    info = dict(pretrained_cfg=cfg, input="image: normalized (N, 3, H, W) float32 (mean/std of pretrained_cfg; "
                "resize to shortest_edge first when set)", output="logits: (N, C, H, W); labels = argmax over C",
                path="dense (rho = 1): every stage and the last head on every pixel", example_size=[height, width])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out / f'{name}.json'} (the preprocessing a deployment applies)")
    return 0


register_command("segment", "segment images: colour labels, overlay and stage map PNGs", add_segment_arguments,
                 run_segment)
register_command("list", "the model zoo and the architectures", lambda p: None, run_list)
register_command("bench", "benchmarks: kernels, cascade, train_step", add_bench_arguments, run_bench)
register_command("export", "the dense path (rho = 1) as torch.export (.pt2) and ONNX, for static-graph runtimes",
                 add_export_arguments, run_export)


# -- entry point ----------------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """One line per option where it fits, so that a command's help fits one screen."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=110)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help: the options)\n")


# what a user's input can cause: one line, not a traceback (anything else is a bug: a traceback)
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparsecascade", description="Deep Layer Cascade semantic segmentation.",
        epilog="'sparsecascade <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        command = sub.add_parser(name, help=cmd.help, description=cmd.help, formatter_class=_Formatter,
                                 usage=f"sparsecascade {name} [options]")
        cmd.add_arguments(command)
        command.add_argument("--debug", action="store_true", help="on an error, show its traceback")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"sparsecascade {args.command}"
    try:
        with _one_line_warnings(prog):
            return int(COMMANDS[args.command].run(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return _exit_status(e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _exit_status(error: BaseException) -> int:
    """1 for a run that failed (a diverged training), 2 for what the user can fix."""
    from .train.divergence import TrainingDiverged

    return 1 if isinstance(error, TrainingDiverged) else 2


def _one_line(error: BaseException) -> str:
    """The error's message on one line; one that sparsecascade did not raise (torch's, Pillow's ...)
    also says its type and where the traceback is."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if not _raised_here(error):
        text = f"{type(error).__name__}: {text} (--debug: the traceback)"
    return text


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in this package."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(Path(__file__).parent)


@contextlib.contextmanager
def _one_line_warnings(prog: str):
    """Warnings as ``prog: warning: message``, one line each (Python's format adds the source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
