"""Benchmarks that report speed as ratios measured side by side in one run.

    python -m sparsecascade.bench {kernels,cascade,real,train_step} [--out bench_out/<name>.json]

``forced_stops`` imposes stop shares on a model (the paper's, on untrained weights) for timing.
"""
