"""Sweep rho on CamVid val: mIoU, ms per image and the share of pixels decided at each stage.

    python examples/rho_tradeoff.py --model lc-vgg16-camvid --data-root ../shared/data/camvid \
        --rhos 1 0.995 0.985 0.97 0.95 0.9 0.8 --max-images 20 --out rho_tradeoff

``--model`` is a zoo name, a Hub repo id or a save_pretrained folder. Writes rho_sweep.csv,
rho_sweep.json and rho_sweep.png (mIoU and time against rho, as the paper's Figure 7).
"""
import argparse

import sparsecascade as sc
from sparsecascade.data import build_dataset, eval_transform
from sparsecascade.evaluate import rho_sweep
from sparsecascade.rho import format_rho, parse_rho


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=sc.zoo.DEFAULT_MODEL)
    parser.add_argument("--data-root", default=None, help="default: $SPARSECASCADE_CAMVID or $SPARSECASCADE_DATA/camvid")
    parser.add_argument("--rhos", type=parse_rho, nargs="+", default=[1.0, 0.995, 0.985, 0.97, 0.95, 0.9, 0.8],
                        help="rho values; one per stage but the last joined by '/' (0.95/0)")
    parser.add_argument("--max-images", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="resize the images (labels stay 360x480); default: the model's training scale")
    parser.add_argument("--out", default="rho_tradeoff")
    args = parser.parse_args(argv)

    model = sc.from_pretrained(args.model)
    size = args.size
    edge = model.config.get("shortest_edge")
    if size is None and edge:  # CamVid's images are 360x480: the shorter side to ``edge`` pixels
        size = (edge, round(edge * 480 / 360))
    val = build_dataset("camvid", "val", args.data_root, transform=eval_transform(model.mean, model.std, size))
    results = rho_sweep(model, val, args.rhos, out_dir=args.out, max_images=args.max_images)
    print(f"{'rho':>6} {'mIoU':>6} {'ms/img':>7}  decided at stages 1/2/3")
    for r in results:
        stops = " / ".join(f"{100 * f:.0f}%" for f in r.stop_fractions)
        print(f"{format_rho(r.rho):>6} {100 * r.miou:6.2f} {r.ms_per_image:7.1f}  {stops}")
    print(f"wrote {args.out}/rho_sweep.csv, rho_sweep.json, rho_sweep.png")


if __name__ == "__main__":
    main()
