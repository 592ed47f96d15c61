"""``sparsecascade bench``: hands its options to ``python -m sparsecascade.bench``."""
from __future__ import annotations

import argparse

HELP = "benchmarks: kernels, cascade, train_step"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=["kernels", "cascade", "real", "train_step"])
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options (--help for them)")


def run(args: argparse.Namespace) -> int:
    from ..bench.__main__ import main as bench_main

    return int(bench_main([args.benchmark, *args.options]) or 0)
