"""``sparsecascade eval``: a trained checkpoint or a pretrained model on a data set: one evaluation,
a rho sweep or a rho calibration, printed and written beside the checkpoint (or to ``--out``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import (device_name, load_model, non_negative_int, positive_float, positive_int, rho_list, rho_value,
                      set_threads)

HELP = "mIoU, stage statistics, ms/image; rho sweep; rho calibration"


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="FILE", help="a training checkpoint (DIR/last.pt)")
    which.add_argument("--pretrained", metavar="NAME", help="a save_pretrained folder, zoo name or Hub id")
    p.add_argument("--dataset", choices=["voc", "cityscapes", "camvid"], metavar="NAME",
                   help="voc, cityscapes, camvid (default: the training data set)")
    p.add_argument("--data-root", dest="data_root", metavar="DIR", help="default: as in training / env vars")
    p.add_argument("--split", default="val", metavar="NAME", help="default: val")
    p.add_argument("--rho", type=rho_value, metavar="R",
                   help="R, or R1/R2 (one per stage but the last); default: 1 for plain/dsn/dsn_dropout, "
                   "else the training rho")
    p.add_argument("--rhos", type=rho_list, metavar="R1,R2,...",
                   help="sweep (a value may be per stage: 0.9/0.5): table (CSV, JSON) and plot (PNG)")
    p.add_argument("--budget", type=positive_float, metavar="X",
                   help="calibrate: best mIoU with cost <= budget over --rhos")
    p.add_argument("--budget-kind", dest="budget_kind", choices=["macs", "ms"], default="macs", metavar="KIND",
                   help="macs: share of dense MACs; ms: ms per image")
    p.add_argument("--head", type=positive_int, metavar="K", help="score stage K's head alone (every pixel stops there)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize images (labels stay full size)")
    p.add_argument("--max-images", dest="max_images", type=positive_int, metavar="N")
    p.add_argument("--device", type=device_name, default="auto", metavar="DEV", help="auto (default), cpu, cuda")
    p.add_argument("--workers", type=non_negative_int, default=2, metavar="N", help="data-loading processes")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads of torch (default: torch's)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: beside the checkpoint, eval/)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import build_dataset, eval_transform
    from ..eval_report import format_table, save_sweep
    from ..evaluate import DEFAULT_RHOS, calibrate_rho, evaluate, rho_sweep
    from ..rho import format_rho
    from ..train import load_trained_model, model_normalization

    if (args.rhos or args.budget is not None) and (args.rho is not None or args.head is not None):
        raise ValueError("--rho, --head: not with --rhos or --budget (a sweep and a calibration set rho themselves)")
    set_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.checkpoint:
        model, cfg = load_trained_model(args.checkpoint, device)
        dataset, data_root = args.dataset or cfg.dataset, args.data_root if args.data_root is not None else cfg.data_root
        default_out = Path(args.checkpoint).parent / "eval"
    else:
        if not args.dataset:
            raise ValueError("--dataset: --pretrained needs it (voc, cityscapes or camvid)")
        model = load_model(args.pretrained, "--pretrained", device=device)
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
        print(f"\ncalibrated: rho = {format_rho(cal.rho)} ({args.budget_kind} budget {args.budget:g})\n")
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
