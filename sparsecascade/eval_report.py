"""An evaluation's result (``EvalResult``, what :mod:`sparsecascade.evaluate` measures) and how it is
written: its summary, the rho-sweep table, ``rho_sweep.csv`` / ``.json`` and the plot (matplotlib
optional). Computes nothing."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .rho import Rho, format_rho

__all__ = ["EvalResult", "format_table", "save_sweep", "plot_sweep"]


@dataclass
class EvalResult:
    rho: Rho  # a number, or one per stage but the last (a tuple; a list in JSON)
    miou: float
    pixel_accuracy: float
    iou: list  # per class; NaN for a class absent from labels and predictions
    stop_fractions: list  # per stage: the share of all pixels decided there
    stage_distribution: list  # per class, per stage: the share of the class's labelled pixels decided there
    ms_per_image: float
    mac_ratio: float  # executed MACs / dense MACs, over the whole data set
    num_images: int
    class_names: list = field(default_factory=list)

    def cost(self, budget_kind: str) -> float:
        return self.mac_ratio if budget_kind == "macs" else self.ms_per_image

    def to_dict(self) -> dict:
        """JSON-ready (NaN -> None)."""
        def clean(v):
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return {k: clean(v) for k, v in asdict(self).items()}

    def row(self) -> dict:
        """The rho-sweep table's row."""
        rho = self.rho if isinstance(self.rho, float) else format_rho(self.rho)  # "0.9/0.5" in one CSV cell
        r = dict(rho=rho, miou=self.miou, pixel_accuracy=self.pixel_accuracy, ms_per_image=self.ms_per_image,
                 mac_ratio=self.mac_ratio)
        r.update({f"stop_{k + 1}": f for k, f in enumerate(self.stop_fractions)})
        return r

    def report(self) -> str:
        """A human-readable summary with the per-class table."""
        lines = [f"rho {format_rho(self.rho)}: mIoU {100 * self.miou:.2f}  pixel acc {100 * self.pixel_accuracy:.2f}  "
                 f"{self.ms_per_image:.1f} ms/image  MACs {100 * self.mac_ratio:.1f}% of dense  "
                 f"({self.num_images} images)",
                 "stopped per stage: " + "  ".join(f"{100 * f:.1f}%" for f in self.stop_fractions),
                 f"{'class':<16}{'IoU':>8}   decided at stage 1..{len(self.stop_fractions)}"]
        names = self.class_names or [str(c) for c in range(len(self.iou))]
        for name, iou, dist in zip(names, self.iou, self.stage_distribution):
            iou_s = "     -" if math.isnan(iou) else f"{100 * iou:6.2f}"
            dist_s = "  ".join("    -" if math.isnan(d) else f"{100 * d:4.0f}%" for d in dist)
            lines.append(f"{name:<16}{iou_s:>8}   {dist_s}")
        return "\n".join(lines)


def format_table(results: Sequence[EvalResult]) -> str:
    k = len(results[0].stop_fractions)
    head = f"{'rho':>7} {'mIoU':>7} {'ms/img':>8} {'MACs':>7} " + " ".join(f"{'stop' + str(i + 1):>6}" for i in range(k))
    rows = [_rho_cell(r.rho) + f" {100 * r.miou:7.2f} {r.ms_per_image:8.2f} {100 * r.mac_ratio:6.1f}% "
            + " ".join(f"{100 * f:5.1f}%" for f in r.stop_fractions) for r in results]
    return "\n".join([head] + rows)


def _rho_cell(rho: Rho) -> str:
    return f"{rho:7.3f}" if isinstance(rho, float) else f"{format_rho(rho):>7}"


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
    """mIoU (left axis) and ms per image (right axis) against rho, as the paper's Figure 7 (the results at
    one rho for every stage: a per-stage rho has no place on that axis and is left out of the plot).

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

    results = [r for r in results if isinstance(r.rho, float)]
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
