"""What an evaluation writes: the rho-sweep table, ``rho_sweep.csv`` / ``.json`` and the plot
(matplotlib optional). Takes ``EvalResult`` objects (:mod:`sparsecascade.evaluate`); computes nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .evaluate import EvalResult

__all__ = ["format_table", "save_sweep", "plot_sweep"]


def format_table(results: Sequence[EvalResult]) -> str:
    k = len(results[0].stop_fractions)
    head = f"{'rho':>7} {'mIoU':>7} {'ms/img':>8} {'MACs':>7} " + " ".join(f"{'stop' + str(i + 1):>6}" for i in range(k))
    rows = [f"{r.rho:7.3f} {100 * r.miou:7.2f} {r.ms_per_image:8.2f} {100 * r.mac_ratio:6.1f}% "
            + " ".join(f"{100 * f:5.1f}%" for f in r.stop_fractions) for r in results]
    return "\n".join([head] + rows)


def save_sweep(results: Sequence[EvalResult], out_dir) -> dict[str, Path]:
    """Write ``rho_sweep.csv``, ``rho_sweep.json`` and, where matplotlib is installed, ``rho_sweep.png``
    (without it: a one-line warning, and no ``png`` in the returned paths). Returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(csv=out / "rho_sweep.csv", json=out / "rho_sweep.json", png=out / "rho_sweep.png")
    rows = [r.row() for r in results]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    if not plot_sweep(results, paths["png"]):
        del paths["png"]
    return paths


def plot_sweep(results: Sequence[EvalResult], path) -> bool:
    """mIoU (left axis) and ms per image (right axis) against rho, as the paper's Figure 7.

    matplotlib is optional (``pip install 'sparsecascade[plot]'``): without it nothing is drawn, a
    one-line warning says so, and the result is False."""
    try:
        import matplotlib
    except ImportError:
        import warnings

        Path(path).unlink(missing_ok=True)  # a plot of an earlier sweep would not show this one
        warnings.warn(f"{Path(path).name} not drawn: matplotlib is not installed (pip install 'sparsecascade[plot]')",
                      stacklevel=2)
        return False

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    rhos = [r.rho for r in results]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(rhos, [100 * r.miou for r in results], "o-", color="tab:blue", label="mIoU")
    ax.set_xlabel("rho (confidence threshold)")
    ax.set_ylabel("mIoU (%)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(rhos, [r.ms_per_image for r in results], "s--", color="tab:red", label="ms / image")
    ax2.set_ylabel("ms per image", color="tab:red")
    ax.set_title("Deep Layer Cascade: accuracy and time against rho")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
