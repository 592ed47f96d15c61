"""``sparsecascade train``: TrainConfig from a recipe and the options, then ``sparsecascade.train.train``."""
from __future__ import annotations

import argparse

from .options import SUPPRESS as S
from .options import (device_name, float_list, json_object, non_negative_int, positive_float, positive_int, rho_value,
                      set_threads)

HELP = "train LC or a baseline (plain, dsn, dsn_dropout, model_cascade)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="JSON", help="TrainConfig fields in a JSON file; options override it")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=S, metavar="NAME", help="lc_resnet18, lc_irnet, ... or package.module:function")
    g.add_argument("--model-kwargs", dest="model_kwargs", type=json_object, default=S, metavar="JSON")
    g.add_argument("--backbone-weights", dest="backbone_weights", default=S, metavar="FILE",
                   help="ImageNet checkpoint for the backbone")
    g.add_argument("--init-weights", dest="init_weights", default=S, metavar="FILE",
                   help="every weight from an earlier run (last.pt or .safetensors); a fresh schedule; "
                        "--backbone-weights is then not read")
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
    g.add_argument("--rho", type=rho_value, default=S, metavar="R",
                   help="cascade threshold, or one per stage but the last (0.9/0.5) (default 0.985)")
    g.add_argument("--dsn-steps", dest="dsn_steps", type=int, default=S, metavar="N",
                   help="lc: DSN initial-training steps (default steps/2)")
    g.add_argument("--drop-ratios", dest="drop_ratios", type=float_list, default=S, metavar="R1,R2,R3",
                   help="dsn_dropout: per-stage label drop (default 0,0.23,0.52)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=S, metavar="N")
    g.add_argument("--batch-size", dest="batch_size", type=positive_int, default=S, metavar="N",
                   help="global, over all processes")
    g.add_argument("--lr", type=positive_float, default=S, metavar="X", help="base learning rate (poly decay)")
    g.add_argument("--head-lr-mult", dest="head_lr_mult", type=float, default=S, metavar="X",
                   help="heads' lr multiplier (default 10)")
    g.add_argument("--momentum", type=float, default=S, metavar="X")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=S, metavar="X")
    g.add_argument("--poly-power", dest="poly_power", type=float, default=S, metavar="X")
    g.add_argument("--grad-clip", dest="grad_clip", type=float, default=S, metavar="X", help="max gradient norm")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no mixed precision on CUDA")
    g.add_argument("--seed", type=non_negative_int, default=S, metavar="N")
    g = p.add_argument_group("run")
    g.add_argument("--out", dest="out_dir", default=S, metavar="DIR", help="checkpoint, log.jsonl, config.json")
    g.add_argument("--device", type=device_name, default=S, metavar="DEV", help="auto (default), cpu, cuda")
    g.add_argument("--workers", type=non_negative_int, default=S, metavar="N", help="data-loading processes")
    g.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads of torch (default: torch's)")
    g.add_argument("--ckpt-every", dest="ckpt_every", type=positive_int, default=S, metavar="N")
    g.add_argument("--log-every", dest="log_every", type=positive_int, default=S, metavar="N")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    g.add_argument("--resume", action="store_true", help="continue the run in DIR (last.pt, else previous.pt)")
    g.add_argument("--overwrite", action="store_true", help="start again from step 0 in a DIR that holds a run")
    g.add_argument("--stop-after", dest="stop_after", type=positive_int, metavar="N",
                   help="end this run (checkpointed) after step N")


def train_config_from_args(args: argparse.Namespace):
    from ..train import TrainConfig

    values = {}
    if args.recipe:
        values.update(TrainConfig.from_json(args.recipe).to_dict())
    skip = {"recipe", "resume", "overwrite", "stop_after", "threads", "debug", "command", "func"}
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    cfg = train_config_from_args(args)
    set_threads(args.threads)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after)
    if result.rank == 0:
        status = "finished" if result.finished else "stopped"
        print(f"{status} at step {result.step}/{cfg.steps}; checkpoint {result.checkpoint}")
    return 0
