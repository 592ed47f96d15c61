"""Train LC (or a baseline) on CamVid from Python, with the recipe the zoo model uses.

    python examples/train_camvid.py --data-root ../shared/data/camvid --steps 20 --out runs/example

The full run is `sparsecascade train --recipe recipes/camvid_lc_resnet18.json` (about 40 minutes on one core);
here any recipe field can be overridden, e.g. fewer steps or smaller crops for a first look.
Killed half way, the same command with --resume continues exactly where it stopped.
"""
import argparse
from pathlib import Path

from sparsecascade.train import TrainConfig, train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "camvid_lc_resnet18.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--mode", default="lc", choices=["lc", "plain", "dsn", "dsn_dropout", "model_cascade"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--out", default="runs/example")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    cfg = TrainConfig.from_json(RECIPE)
    cfg.data_root, cfg.mode, cfg.steps, cfg.batch_size = args.data_root, args.mode, args.steps, args.batch_size
    cfg.dsn_steps = args.steps // 2  # LC: DSN initial training for half the steps, then cascade training
    cfg.crop_size, cfg.out_dir, cfg.progress, cfg.workers = list(args.crop_size), args.out, False, 0
    cfg.log_every = max(1, args.steps // 10)
    result = train(cfg, resume=args.resume)
    print(f"{result.step} steps, last loss {result.last_loss:.3f}; checkpoint {result.checkpoint}")
    print(f"evaluate: sparsecascade eval --checkpoint {result.checkpoint} --rhos 1,0.985,0.9")


if __name__ == "__main__":
    main()
