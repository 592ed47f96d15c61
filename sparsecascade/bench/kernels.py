"""Region convolution against the best dense convolution, swept over the active fraction.

For each conv shape of the LC backbones and each active fraction f, times in one run:
``dense`` (F.conv2d on channels_last input, the best dense baseline), ``region`` (what
``region_conv2d`` runs for the device: "auto") and, on a CPU, ``region_gather`` (the
gather-GEMM-scatter path at every fraction, backend="torch"). Ratios are region / dense;
``mac_ratio`` is the share of the dense MACs that ``region`` executed, counted by the op from the
rows it handed to its kernel (f, the arithmetic floor, unless it ran the dense convolution).
"""
from __future__ import annotations

import argparse
import torch
import torch.nn.functional as F

from ..ops import RegionIndex, count_macs, region_conv2d
from .timing import coherent_mask, measure_all_ms, measure_ms, write_results

# (name, C_in, C_out, KH, KW, padding): convolutions of the LC backbones at output stride 8.
SHAPES = [
    ("3x3 256->256", 256, 256, 3, 3, (1, 1)),
    ("1x1 1088->192", 1088, 192, 1, 1, (0, 0)),
    ("1x7 128->160", 128, 160, 1, 7, (0, 3)),
    ("3x3 320->384", 320, 384, 3, 3, (1, 1)),
]
FRACTIONS = [1.0, 0.75, 0.5, 0.25, 0.1]


def bench_kernels(shapes=SHAPES, fractions=FRACTIONS, batches=(1, 4), size=64, dtype=torch.float32,
                  device="cpu", backward=False, reps=10):
    device = torch.device(device)
    rows = []
    for name, c_in, c_out, kh, kw, pad in shapes:
        for n in batches:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(n, c_in, size, size, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last)
            w = (torch.randn(c_out, c_in, kh, kw, generator=gen) / (c_in * kh * kw) ** 0.5).to(device, dtype)
            w = w.contiguous(memory_format=torch.channels_last)
            b = torch.zeros(c_out, device=device, dtype=dtype)
            if backward:
                x.requires_grad_(True)
                w.requires_grad_(True)

            def run(fn):
                if not backward:
                    with torch.no_grad():
                        return fn()
                out = fn()
                out.backward(torch.ones_like(out))
                return out

            dense_fn = lambda: run(lambda: F.conv2d(x, w, b, padding=pad))  # noqa: E731
            providers = {"region": "auto"} if device.type == "cuda" else {"region": "auto", "region_gather": "torch"}
            for f in fractions:
                mask = coherent_mask(n, size, size, f, device=device)
                index = RegionIndex(mask)  # built once per stage and shared by its layers, as LayerCascade does
                fns = {"dense": dense_fn}
                for provider, backend in providers.items():
                    fns[provider] = (lambda backend: lambda: run(
                        lambda: region_conv2d(x, w, b, index, pad, backend=backend)))(backend)
                if device.type == "cuda":
                    ms = {name: measure_ms(fn, device=device) for name, fn in fns.items()}
                else:  # interleaved rounds, best of reps: robust to other processes on the CPU
                    ms = {name: min(t) for name, t in measure_all_ms(fns, reps=reps).items()}
                with torch.no_grad(), count_macs() as executed:
                    region_conv2d(x, w, b, mask, pad, backend="auto")
                dense_macs = mask.numel() * c_out * c_in * kh * kw
                row = dict(shape=name, batch=n, size=size, dtype=str(dtype).replace("torch.", ""), fraction=f,
                           mac_ratio=round(executed.macs / dense_macs, 4), dense_ms=round(ms["dense"], 3),
                           pass_="forward+backward" if backward else "forward")
                for provider in providers:
                    row[f"{provider}_ms"] = round(ms[provider], 3)
                    row[f"{provider}_ratio"] = round(ms[provider] / ms["dense"], 3)
                rows.append(row)
                print(_format_row(row), flush=True)
    return rows


def bench_overhead(reps: int = 300) -> list:
    """Per-call cost on a tiny layer (3x3 16->16, 16x16 map, half active), where fixed work dominates:
    ``F.conv2d``; ``region_conv2d`` on a stage's ``RegionIndex``; a converted conv + frozen BN + ReLU
    inside ``active_region``, against the same unconverted Sequential; and, for training, forward and
    backward (through autograd) of ``region_conv2d`` against ``F.conv2d``'s. Median microseconds."""
    import torch.nn as nn

    from ..nn import active_region, convert_to_region, freeze_batchnorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    index = RegionIndex(coherent_mask(1, 16, 16, 0.5))
    block = freeze_batchnorm(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())).eval()
    converted = convert_to_region(freeze_batchnorm(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16),
                                                                 nn.ReLU())).eval())

    def region_layer():
        with active_region(index, "torch"):
            converted(x)

    fns = {"F.conv2d": lambda: F.conv2d(x, w, padding=1), "region_conv2d": lambda: region_conv2d(x, w, None, index, 1),
           "conv+BN+ReLU (nn)": lambda: block(x), "conv+BN+ReLU (region)": region_layer}
    with torch.no_grad():
        times = measure_all_ms(fns, reps=reps, warmup=20)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    grad_out = torch.randn(1, 16, 16, 16, generator=gen)

    def training(conv):
        return lambda: torch.autograd.grad(conv(xg, wg), (xg, wg), grad_out)

    times.update(measure_all_ms({
        "F.conv2d, fwd+bwd": training(lambda a, b: F.conv2d(a, b, padding=1)),
        "region_conv2d, fwd+bwd": training(lambda a, b: region_conv2d(a, b, None, index, 1))}, reps=reps, warmup=20))
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    rows = []
    for name, us in median.items():
        base = "F.conv2d, fwd+bwd" if name.endswith("fwd+bwd") else "F.conv2d"
        rows.append(dict(call=name, median_us=round(us, 1), vs_conv2d=round(us / median[base], 2)))
        print(f"{name:>22}: {us:7.1f} us ({rows[-1]['vs_conv2d']:.2f}x {base})", flush=True)
    return rows


def _format_row(row):
    parts = [f"{row['shape']:>14} b{row['batch']} f={row['fraction']:<4} dense {row['dense_ms']:8.2f} ms"]
    for provider in ("region", "region_gather"):
        if f"{provider}_ms" in row:
            parts.append(f"{provider} {row[f'{provider}_ms']:8.2f} ms ({row[f'{provider}_ratio']:.2f}x)")
    parts.append(f"MACs {row['mac_ratio']:.2f}x")
    return " | ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sparsecascade.bench kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float32 on a CPU, float16 on CUDA")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=64, help="feature map height and width")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    parser.add_argument("--shapes", nargs="+", default=None, help="subset of: " + ", ".join(s[0] for s in SHAPES))
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--overhead", action="store_true", help="per-call cost on a tiny layer instead")
    parser.add_argument("--out", default="bench_out/kernels.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.overhead:
        write_results(args.out, "kernels", argv, bench_overhead())
        return
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    shapes = [s for s in SHAPES if args.shapes is None or s[0] in args.shapes]
    if not shapes:
        parser.error(f"--shapes: none of {args.shapes} is one of {[s[0] for s in SHAPES]}")
    rows = bench_kernels(shapes, args.fractions, args.batch, args.size, dtype, args.device, args.backward, args.reps)
    write_results(args.out, "kernels", argv, rows)


if __name__ == "__main__":
    main()
