"""End-to-end LC speed against the dense network (rho = 1), at the stop fractions the paper reports.

For each backbone, times in one run: the model at rho = 1 (every stage and head on every pixel:
the deeply supervised network) and the same model with the paper's stage-1/stage-2 stop shares
imposed (spatially coherent masks; ``sparsecascade.bench.forced_stops``). Reports the speed-up
next to the MAC-ratio bound (dense MACs / executed MACs) and their quotient.
"""
from __future__ import annotations

import argparse

import torch

from ..factory import create_model
from .forced_stops import force_stop_fractions
from .timing import measure_all_ms, measure_ms, write_results

# Paper, Table 1 (stopped at stages 1 / 2): rho = 0.985, 0.95 (between), 0.9
STOP_SETTINGS = [(0.23, 0.29), (0.35, 0.30), (0.44, 0.31)]
BACKBONES = ["lc_resnet50", "lc_irnet", "lc_resnet18", "lc_vgg16", "lc_resnet101"]


def bench_cascade(backbones, size=256, batch=1, device="cpu", dtype=torch.float32, reps=5, backend="auto"):
    device = torch.device(device)
    rows = []
    for name in backbones:
        model = create_model(name, num_classes=21).eval().to(device, dtype).set_backend(backend)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            model.rho = 1.0
            dense = force_stop_fractions(model, None)(x)
            for stops in STOP_SETTINGS:
                out = force_stop_fractions(model, stops)(x)

                def run_dense():
                    force_stop_fractions(model, None)(x)

                def run_lc(stops=stops):
                    force_stop_fractions(model, stops)(x)

                if device.type == "cuda":
                    dense_ms, ms = measure_ms(run_dense, device=device), measure_ms(run_lc, device=device)
                else:  # interleaved rounds, best of reps: robust to other processes on the CPU
                    times = measure_all_ms({"dense": run_dense, "lc": run_lc}, reps=reps, warmup=1)
                    dense_ms, ms = min(times["dense"]), min(times["lc"])
                bound = dense.macs / out.macs
                row = dict(model=name, size=size, batch=batch, dtype=str(dtype).replace("torch.", ""),
                           stop_stage1=stops[0], stop_stage2=stops[1],
                           measured_stops=[round(f, 4) for f in out.stop_fractions],
                           dense_ms=round(dense_ms, 2), lc_ms=round(ms, 2), speedup=round(dense_ms / ms, 3),
                           mac_bound=round(bound, 3), share_of_bound=round(dense_ms / ms / bound, 3))
                rows.append(row)
                print(f"{name:>13} {size}x{size} b{batch} stops {stops[0]:.2f}/{stops[1]:.2f} | dense {dense_ms:8.1f} ms"
                      f" | LC {ms:8.1f} ms | speed-up {row['speedup']:.2f}x of bound {bound:.2f}x"
                      f" ({100 * row['share_of_bound']:.0f}%)", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sparsecascade.bench cascade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lc_resnet50", "lc_irnet"], choices=BACKBONES)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="bench_out/cascade.json")
    args = parser.parse_args(argv)
    rows = bench_cascade(args.models, args.size, args.batch, args.device, getattr(torch, args.dtype), args.reps,
                         args.backend)
    write_results(args.out, "cascade", argv, rows)


if __name__ == "__main__":
    main()
