"""Segment an image with the shipped CamVid model: offline, on the CPU, in a few seconds.

    python examples/quickstart.py [IMAGE] [--rho R] [--out DIR] [--model NAME]

Loads the package's default model, ``sparsecascade.zoo.DEFAULT_MODEL`` (``lc-vgg16-camvid``: its weights
ship with the package, no network needed), segments the
sample street scene shipped in ``examples/images/`` (or IMAGE), prints where the pixels were
decided, and writes the colour label map, an overlay and the stage map (green: stage 1, yellow:
stage 2, red: stage 3, as the paper's Figures 4 and 6) as PNG files.
"""
import argparse
from pathlib import Path

import sparsecascade
from sparsecascade.rho import format_rho, parse_rho

SAMPLE = Path(__file__).resolve().parent / "images" / "camvid_0016E5_08129.jpg"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default=str(SAMPLE))
    parser.add_argument("--rho", type=parse_rho, default=None,
                        help="confidence threshold, or one per stage but the last (0.95/0) (default: the model's)")
    parser.add_argument("--out", default="quickstart_out")
    parser.add_argument("--model", default=sparsecascade.zoo.DEFAULT_MODEL, help="zoo name or save_pretrained folder")
    args = parser.parse_args(argv)

    model = sparsecascade.from_pretrained(args.model)
    result = model.segment(args.image, rho=args.rho)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.colorize().save(out / "labels.png")
    result.overlay().save(out / "overlay.png")
    result.stage_picture().save(out / "stages.png")

    print(f"{args.image}: {args.model}, {result.labels.shape[1]}x{result.labels.shape[0]}, {result.ms:.0f} ms, "
          f"rho {format_rho(args.rho if args.rho is not None else model.rho)}")
    print("decided at stages 1/2/3: " + " / ".join(f"{100 * f:.0f}%" for f in result.stop_fractions))
    counts = {result.class_names[c]: (result.labels == c).mean() for c in range(len(result.class_names))}
    print("classes: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in
                                 sorted(counts.items(), key=lambda kv: -kv[1]) if share >= 0.01))
    print(f"wrote {out / 'labels.png'}, {out / 'overlay.png'}, {out / 'stages.png'}")


if __name__ == "__main__":
    main()
