"""LC on real images against the plain dense network, over rho: the end-to-end claim of the library.

For a trained model and real images (resized to ``--size``), times in one run, interleaved round by
round: ``plain`` (the stages and the last head on every pixel: the network without the cascade,
what a user would otherwise run) and the model at each rho. Reports, per rho, the time ratio
LC / plain, the MAC ratio LC / plain (MACs executed, counted by the ops) and the share of the MAC
bound reached (MAC ratio / time ratio; 1.0 = time follows the arithmetic exactly). With ``--compile``,
the model under ``torch.compile`` too, checked equal to eager, its time beside eager's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..ops import count_macs
from ..rho import format_rho, parse_rho
from ..nn import active_region
from .timing import measure_all_ms, write_results

RHOS = [1.0, 0.995, 0.985, 0.97, 0.95, 0.9, 0.8, 0.7, 0.5]


def load_batch(model, paths, size) -> list[torch.Tensor]:
    """Each image read, resized to ``size`` and normalised as the model was trained (its pretrained_cfg)."""
    from ..data.images import read_image
    from ..segment import Preprocess

    prep = Preprocess.of(model)
    images = []
    for path in paths:
        x = prep.batch([read_image(path)])
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        images.append(x.contiguous(memory_format=torch.channels_last))
    return images


def plain_forward(model, image: torch.Tensor) -> torch.Tensor:
    """The stages and the last head, called outside any region (dense converted modules), the logits
    upsampled to the image and their argmax: the labels, as LC delivers them."""
    x = image
    for stage in model.stages:
        x = stage(x)
    logits = torch.nn.functional.interpolate(model.heads[-1](x), size=image.shape[-2:], mode="bilinear",
                                             align_corners=False)
    return logits.argmax(1)


def bench_real(model, images, rhos=RHOS, reps=5, compiled=False):
    with torch.no_grad(), count_macs() as plain_count, active_region(None):  # every pixel, counted
        for x in images:
            plain_forward(model, x)
    plain_macs = plain_count.macs
    fns = {"plain": lambda: [plain_forward(model, x) for x in images]}
    macs, stops = {}, {}
    cmodel = torch.compile(model) if compiled else None
    with torch.no_grad():
        for rho in rhos:
            def run(rho=rho):
                model.rho = rho
                return [model(x) for x in images]

            outs = run()
            if cmodel is not None:  # the same model under torch.compile (inductor), timed beside eager
                def run_compiled(rho=rho):
                    model.rho = rho
                    return [cmodel(x) for x in images]

                for got, want in zip(run_compiled(), outs):  # compiles (once) and checks it equals eager
                    assert torch.equal(got.labels, want.labels), f"compiled != eager at rho {rho}"
                fns[f"compiled {rho}"] = run_compiled
            macs[rho] = sum(o.macs for o in outs)
            stops[rho] = [round(sum(o.stop_fractions[k] for o in outs) / len(outs), 4) for k in range(model.num_stages)]
            fns[rho] = run
        times = measure_all_ms(fns, reps=reps, warmup=1)
    plain_ms = min(times["plain"]) / len(images)
    rows = []
    print(f"plain: {plain_ms:.1f} ms/image")
    for rho in rhos:
        ms = min(times[rho]) / len(images)
        mac_ratio, time_ratio = macs[rho] / plain_macs, ms / plain_ms
        row = dict(rho=rho, plain_ms=round(plain_ms, 2), lc_ms=round(ms, 2), time_ratio=round(time_ratio, 3),
                   mac_ratio=round(mac_ratio, 3), share_of_bound=round(mac_ratio / time_ratio, 3), stop_fractions=stops[rho])
        if f"compiled {rho}" in times:
            row["compiled_ms"] = round(min(times[f"compiled {rho}"]) / len(images), 2)
            row["compiled_vs_eager"] = round(row["compiled_ms"] / ms, 3)
        rows.append(row)
        print(f"rho {format_rho(rho):<9} {ms:8.1f} ms/image | LC/plain time {time_ratio:.3f} | MACs {mac_ratio:.3f} | "
              f"share of bound {row['share_of_bound']:.2f} | stops {stops[rho]}"
              + (f" | compiled/eager {row['compiled_vs_eager']:.3f}" if "compiled_ms" in row else ""), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sparsecascade.bench real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lc-vgg16-camvid", help="a zoo name or a saved model folder")
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files (or one folder)")
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--rhos", type=parse_rho, nargs="+", default=RHOS, metavar="R",
                        help="rho values; one per stage but the last joined by '/' (0.9/0.5)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the model under torch.compile (inductor)")
    parser.add_argument("--out", default="bench_out/real.json")
    args = parser.parse_args(argv)
    from ..hub import from_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.images]
    if len(paths) == 1 and paths[0].is_dir():
        paths = sorted(p for p in paths[0].iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        parser.error("--images: no image files")
    model = from_pretrained(args.model).eval()
    images = load_batch(model, paths[: args.max_images], tuple(args.size))
    rows = bench_real(model, images, args.rhos, args.reps, compiled=args.compile)
    write_results(args.out, "real", argv, [dict(model=args.model, size=args.size, images=len(images), **r) for r in rows])


if __name__ == "__main__":
    main()
