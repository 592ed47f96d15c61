"""Benchmarks that report speed as ratios measured side by side in one run.

    python -m sparsecascade.bench kernels [--out bench_out/kernels.json]
"""
