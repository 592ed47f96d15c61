"""An experiment's results.md from the files its ``experiment.sh eval`` / ``publish`` wrote.

    python zoo/make_results.py zoo/lc-vgg16-camvid [--no-figures] [--markdown FILE] [--data-root DIR]
    python zoo/make_results.py zoo/lc-vgg16-camvid --print-default-rho    # the rho `publish` ships
    python zoo/make_results.py zoo/lc-vgg16-camvid --record-environment   # results/environment.json
    python zoo/make_results.py zoo/lc-vgg16-camvid --record-environment table2_environment.json

Every number is read from a file; every file was written by a command given beside its table.
What is experiment-specific lives in the experiment folder:

- ``results_spec.json``: the runs and how they are labelled, the runs folder, the evaluation size, the
  rho sweep, the budgets, the default rho's rule, the issue's targets, the figures (keys below);
- ``setup.md``: the set-up section, a template whose ``{{ expr }}`` fields are Python expressions over
  the runs' configs (``cfg``: the main run's, ``configs[run]``, ``get(run, key)``, ``pct``, ``env`` ...);
- ``discussion.md`` (optional): hand-written text appended as it is;
- ``README.md`` (optional): the model card; the text between ``<!-- results:begin -->`` and
  ``<!-- results:end -->`` is replaced by a summary of the measured tables.

It reads ``results/<run>/{config.json,log.jsonl,eval.json,eval_head<K>.json}``, the sweep run's
``rho_sweep.json``, ``results/<run>/budget<B>/calibration.json``, ``results/shipped/eval.json``,
``results/pictures/``, ``results/environment.json`` (where the shipped run was timed) and
``results/table2_environment.json`` (where Table 2's runs were, when ``eval-b`` ran apart). A run that
has not been trained or evaluated yet is reported as such in the tables ("not run", "not evaluated",
"training: step N of M"); nothing here needs every file to exist. With figures (the default) it also draws
``results/training_curves.png``, ``results/stage_distribution.png`` and ``results/stage_maps.png``.

results_spec.json keys: ``name``, ``title``, ``runs_dir``, ``data_root``, ``eval_size``,
``train_images``, ``recipe``, ``main_run`` (the run whose config is ``cfg``), ``table2`` (``heading``,
``runs`` as [run, label] pairs, ``paper``, ``default_row``), ``matched`` (``heading``, ``runs``: two
[run, label] pairs, LC's then DSN's, each with a ``rho_sweep.json`` over ``rhos``: both networks as
cascades at the same rhos, on Table 2's budget), ``long_run`` (a run outside Table 2's
budget: ``run``, ``label``, ``heads``, ``continues``: [run, label] pairs of the runs it started from,
oldest first), ``sweep`` (``run``, ``rhos``, ``speedup``, ``per_class``),
``calibrations`` (budgets, as written in the folder names) and ``calibration_rhos``, ``default`` (``{"calibration": B}`` or
``{"min_speedup": X}``), ``table3_rhos``, ``targets``, ``training_summary``, ``pictures``,
``shipped_images``, ``curves_title``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Optional

import numpy as np

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent
SPEC_NAME = "results_spec.json"
CARD_BEGIN, CARD_END = "<!-- results:begin -->", "<!-- results:end -->"


def load(path: Path):
    return json.loads(path.read_text())


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def per_stage(rho) -> bool:
    """A rho per stage (a JSON list), as ``sparsecascade.rho`` writes it."""
    return isinstance(rho, (list, tuple))


def fmt_rho(rho) -> str:
    """0.7 -> "0.7"; [0.9, 0.5] -> "0.9/0.5": ``sparsecascade.rho.format_rho``'s spelling, written out here
    because importing the package imports torch, which this script needs only to record the environment."""
    return "/".join(f"{v:g}" for v in rho) if per_stage(rho) else f"{rho:g}"


def same_rho(a, b) -> bool:
    if per_stage(a) or per_stage(b):
        return per_stage(a) and per_stage(b) and len(a) == len(b) and all(abs(u - v) < 1e-9 for u, v in zip(a, b))
    return abs(a - b) < 1e-9


def row_at(sweep: list, rho, exact: bool = False) -> Optional[dict]:
    """The sweep's row at ``rho`` (``exact``) or, for one number, the nearest row at one number."""
    if exact or per_stage(rho):
        return next((r for r in sweep if same_rho(r["rho"], rho)), None)
    numbers = [r for r in sweep if not per_stage(r["rho"])]
    return min(numbers, key=lambda r: abs(r["rho"] - rho)) if numbers else None


def sweep_order(row: dict):
    """One rho for every stage first, descending (as the paper's Table 1), then the per-stage ones as run."""
    return (1, 0.0) if per_stage(row["rho"]) else (0, -row["rho"])


def read_log(path: Path) -> list[dict]:
    """log.jsonl, one record per logged step (a resumed run's log is truncated at the checkpoint)."""
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return [records[s] for s in sorted(records)]


class Experiment:
    """One zoo experiment folder: its spec and every result file it has so far."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.spec = load(self.folder / SPEC_NAME)
        self.name = self.spec["name"]
        self.results = self.folder / "results"
        self.rel = self.folder.relative_to(REPO).as_posix() if self.folder.is_relative_to(REPO) else self.folder.as_posix()
        self.experiment = f"bash {self.rel}/experiment.sh"
        self.runs_dir = self.spec["runs_dir"]
        self.data_root = self.spec["data_root"]
        self.size = self.spec["eval_size"]
        table2 = self.spec.get("table2", {})
        self.table2 = [tuple(r) for r in table2.get("runs", [])]
        self.long = self.spec.get("long_run")
        # the runs the shipped run continues (their weights initialised it), oldest first
        self.earlier = [tuple(r) for r in (self.long or {}).get("continues", [])]
        self.chain = [r for r, _ in self.earlier] + ([self.long["run"]] if self.long else [])  # the shipped run's parts
        self.runs = list(dict.fromkeys([r for r, _ in self.table2] + self.chain))
        self.configs = {r: self._file(r, "config.json") for r in self.runs}
        self.logs = {r: read_log(self.results / r / "log.jsonl") if (self.results / r / "log.jsonl").is_file() else None
                     for r in self.runs}
        self.evals = {r: self._file(r, "eval.json") for r in self.runs}
        sweep_spec = self.spec.get("sweep")
        self.sweep_run = sweep_spec["run"] if sweep_spec else None
        sweep = self._file(self.sweep_run, "rho_sweep.json") if sweep_spec else None
        self.sweep = sorted(sweep, key=sweep_order) if sweep else []
        self.calibrations = {b: self._file(self.sweep_run, f"budget{b}", "calibration.json")
                             for b in self.spec.get("calibrations", [])}
        self.shipped = self._file("shipped", "eval.json")
        self.environment = self._file("environment.json")
        self.table2_environment = self._file("table2_environment.json")
        matched = self.spec.get("matched") or {}
        self.matched = [tuple(r) for r in matched.get("runs", [])]
        self.matched_sweeps = {r: sorted(s, key=sweep_order) if (s := self._file(r, "rho_sweep.json")) else None
                               for r, _ in self.matched}
        recipe = self.spec.get("recipe")
        self.recipe = load(REPO / recipe) if recipe and (REPO / recipe).is_file() else None
        main = self.spec.get("main_run")
        self.cfg = self.configs.get(main) or self.recipe or {}

    def step_offset(self, run: str) -> int:
        """The steps a run continues from: the configured steps of the runs the shipped run continues
        that come before it (0 for any other run)."""
        before = self.chain[:self.chain.index(run)] if run in self.chain else []
        return sum((self.configs.get(r) or {}).get("steps", 0) for r in before)

    def labels(self) -> dict:
        """Each run's name in the tables: Table 2's, then the shipped run's parts."""
        labels = dict(self.table2)
        if self.long:
            labels.update(dict(self.earlier))
            labels[self.long["run"]] = self.long["label"]
        return labels

    def _file(self, *parts):
        path = self.results.joinpath(*parts)
        return load(path) if path.is_file() else None

    # -- the state of a run -------------------------------------------------------------------
    def training_state(self, run: str) -> Optional[str]:
        """None for a finished run, else what to print in place of its numbers."""
        config, log = self.configs.get(run), self.logs.get(run)
        if config is None and not log:
            return "not run"
        done = log[-1]["step"] if log else 0
        planned = (config or {}).get("steps")
        if planned is not None and done < planned:
            return f"training: step {done} of {planned}"
        return None

    def missing(self, run: str) -> str:
        """Why a run has no eval.json: not run, still training, or trained but not evaluated."""
        return self.training_state(run) or "not evaluated"

    def head(self, run: str, k: int):
        return self._file(run, f"eval_head{k}.json")

    def train_split(self, run: str):
        """The run evaluated on its training images (``experiment.sh eval``: ``--split train``), or None."""
        return self._file(run, "train_split", "eval.json")

    # -- the default rho ----------------------------------------------------------------------
    def default(self, published: bool = True) -> tuple[Optional[dict], str]:
        """(the evaluation at the default rho, how it was chosen). ``published``: where the package was
        published at another rho than the rule picks now, that rho (what users get); False: the rule's
        pick alone (what the next publish ships)."""
        rule = self.spec.get("default", {})
        if self.sweep_run and not self.sweep and not self.calibrations:
            return None, f"no rho sweep yet: `{self.sweep_run}` {self.missing(self.sweep_run)}"
        if "calibration" in rule:
            cal = self.calibrations.get(rule["calibration"])
            return (cal["result"] if cal else None), f"calibrated for {float(rule['calibration']):.0%} of the MACs"
        if "min_speedup" in rule:
            rho, why = pick_rho(self.sweep, rule["min_speedup"])
            if rho is None:
                return None, why
            if published and self.shipped is not None and not same_rho(self.shipped["rho"], rho):
                shipped = row_at(self.sweep, self.shipped["rho"], exact=True)
                return shipped, (f"the shipped rho (the rule, {why}, picks {fmt_rho(rho)}: "
                                 "the package was published with another RHO)")
            return row_at(self.sweep, rho, exact=True), why
        return None, "no rule"


def pick_rho(sweep: list, min_speedup: float) -> tuple[Optional[float], str]:
    """The best-mIoU rho of the sweep measured at least ``min_speedup`` x faster than rho = 1 (ties: the
    faster); if none is, the best-mIoU rho no slower than rho = 1 (so never a default slower than dense)."""
    dense = row_at(sweep, 1.0, exact=True)
    if dense is None:
        return None, "no rho = 1 row in the sweep"
    for need in (min_speedup, 1.0):
        fit = [r for r in sweep if dense["ms_per_image"] / r["ms_per_image"] >= need]
        if fit:
            best = max(fit, key=lambda r: (r["miou"], -r["ms_per_image"]))
            if need == min_speedup:
                return best["rho"], f"the best mIoU at >= {min_speedup:g}x the speed of rho = 1"
            return best["rho"], (f"no rho reached {min_speedup:g}x the speed of rho = 1; the best mIoU no slower "
                                 "than rho = 1")
    return 1.0, "rho = 1"


# -- figures ----------------------------------------------------------------------------------
def training_curves(x: Experiment, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = x.labels()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for run in x.runs:
        log = x.logs.get(run)
        if log:
            offset = x.step_offset(run)
            ax.plot([offset + r["step"] for r in log], [r["loss"] for r in log], label=labels[run])
    ax.set_xlabel(f"step (batch {x.cfg.get('batch_size', 8)})")
    ax.set_ylabel("training loss (summed over the trained heads)")
    ax.set_title(x.spec.get("curves_title", f"{x.name}: training loss"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def stage_distribution_plot(result: dict, out: Path) -> None:
    """The paper's Figure 5: per class, the share of its pixels decided at each stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, dist = result["class_names"], np.array([[np.nan if v is None else v for v in row]
                                                   for row in result["stage_distribution"]])
    order = np.argsort(-np.nan_to_num(dist[:, 0]))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    bottom = np.zeros(len(names))
    for k, color in enumerate(["#2ecc71", "#f1c40f", "#e74c3c"][:dist.shape[1]]):
        values = np.nan_to_num(dist[order, k])
        ax.bar(range(len(names)), 100 * values, bottom=100 * bottom, color=color, label=f"stage {k + 1}")
        bottom += values
    ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=45, ha="right")
    ax.set_ylabel("% of the class's pixels")
    ax.set_title(f"Where each class is decided (LC, rho = {fmt_rho(result['rho'])}, CamVid val)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def pictured(x: Experiment) -> list[str]:
    """The val images that ``experiment.sh publish`` segmented."""
    return [stem for stem in x.spec.get("pictures", [])
            if all((x.results / "pictures" / f"{stem}_{kind}.png").is_file() for kind in ("labels", "stages"))]


def stage_map_grid(x: Experiment, data_root: Path, out: Path) -> None:
    """Image | ground truth | LC labels | stage map, one row per val image (Figures 4 and 6)."""
    from PIL import Image

    from sparsecascade.data import CAMVID_INFO

    palette = np.zeros((256, 3), np.uint8)
    palette[:len(CAMVID_INFO.palette)] = np.asarray(CAMVID_INFO.palette, np.uint8)
    rows = []
    for stem in pictured(x):
        pics = [x.results / "pictures" / f"{stem}_{kind}.png" for kind in ("labels", "stages")]
        image = np.asarray(Image.open(data_root / "val" / f"{stem}.png").convert("RGB"))
        truth = palette[np.asarray(Image.open(data_root / "valannot" / f"{stem}.png"))]
        cells = [image, truth] + [np.asarray(Image.open(p).convert("RGB")) for p in pics]
        rows.append(np.concatenate([c[::2, ::2] for c in cells], axis=1))  # half size: a compact figure
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out)


# -- the set-up template ----------------------------------------------------------------------
_FIELD = re.compile(r"\{\{(.+?)\}\}", re.S)


def render(template: str, namespace: dict) -> str:
    """``{{ expr }}`` / ``{{ expr:fmt }}`` -> the f-string field ``{expr:fmt}`` evaluated in ``namespace``."""
    def field(match):
        inner = match.group(1).strip()
        return eval("f" + repr("{" + inner + "}"), dict(namespace))  # the repository's own template
    return _FIELD.sub(field, template)


def template_namespace(x: Experiment) -> dict:
    def get(run, key, missing="not run"):
        config = x.configs.get(run)
        return missing if config is None else config.get(key, missing)

    env = x.environment or {}
    return dict(x=x, cfg=x.cfg, configs=x.configs, recipe=x.recipe or {}, get=get, pct=pct, env=env,
                experiment=x.experiment, rel=x.rel, name=x.name, runs_dir=x.runs_dir, data_root=x.data_root,
                size=x.size, train_images=x.spec.get("train_images", 367), state=x.training_state)


# -- the document -----------------------------------------------------------------------------
def eval_command(x: Experiment, run: str, extra: str = "", out: Optional[str] = None) -> str:
    out = out or f"{x.rel}/results/{run}"
    return (f"sparsecascade eval --checkpoint {x.runs_dir}/{run}/last.pt --data-root {x.data_root} "
            f"--size {x.size[0]} {x.size[1]}{extra} --out {out}")


def ms(r) -> str:
    return f"{r['ms_per_image']:.1f}"


def status(margin: float, unit: str, fmt: str = "+.2f") -> str:
    """A target's verdict: met or missed, with the margin."""
    return f"{'met' if margin >= 0 else 'missed'} ({format(margin, fmt)}{unit})"


def targets_section(x: Experiment, default: Optional[dict], why: str) -> list[str]:
    """The issue's targets, each met or missed with its margin; "not measured" where a file is missing."""
    t = x.spec["targets"]
    long = x.long["run"] if x.long else x.sweep_run
    where = f"the shipped run `{long}` at its default rho" + (f" = {fmt_rho(default['rho'])}" if default else "")
    md = [f"## Targets ({t.get('source', 'the issue')})", "",
          f"Measured by the commands of the tables below ({x.size[0]}x{x.size[1]} input, scored at the labels' "
          "full 360x480). The default rho: " + (f"{fmt_rho(default['rho'])}, {why}." if default else f"not chosen yet ({why}).")
          + " A run shown as \"not run\" has no log in `results/<run>/` yet (`experiment.sh` copies it there "
          "when the run has finished).", "",
          "| target | measured | status |", "|---|---|---|"]

    lo, hi = t["miou"]  # the floor and the goal
    if default is not None:
        m = default["miou"]
        md.append(f"| LC mIoU >= {100 * hi:g} (at the very least {100 * lo:g}), {where} | {pct(m)} | "
                  f"{status(100 * (m - hi), ' points')} for {100 * hi:g}; {status(100 * (m - lo), ' points')} "
                  f"for {100 * lo:g} |")
        ious = [(v if v is not None else float("nan"), n) for v, n in zip(default["iou"], default["class_names"])]
        worst, name = min(ious, key=lambda p: (math.inf if math.isnan(p[0]) else p[0]))
        zero = [n for v, n in ious if not v > 0]
        md.append(f"| every class above 0 IoU, {where} | lowest: {name} {pct(worst)} | "
                  + (status(100 * worst, " points") if not zero else f"missed ({', '.join(zero)} at 0)") + " |")
    else:
        md.append(f"| LC mIoU >= {100 * hi:g} (at the very least {100 * lo:g}) | not measured ({why}) | not measured |")
        md.append(f"| every class above 0 IoU | not measured ({why}) | not measured |")
    lc, dsn = t["same_budget"]
    e_lc, e_dsn = x.evals.get(lc), x.evals.get(dsn)
    label = f"LC >= DSN - {100 * t['lc_vs_dsn']:g} mIoU at the same budget (`{lc}` at its training rho, `{dsn}` at rho = 1)"
    if e_lc and e_dsn:
        margin = e_lc["miou"] - (e_dsn["miou"] - t["lc_vs_dsn"])
        md.append(f"| {label} | LC {pct(e_lc['miou'])}, DSN {pct(e_dsn['miou'])} "
                  f"({100 * (e_lc['miou'] - e_dsn['miou']):+.1f}) | {status(100 * margin, ' points')} |")
    else:
        gaps = "; ".join(f"`{r}` {x.missing(r)}" for r, e in ((lc, e_lc), (dsn, e_dsn)) if not e)
        md.append(f"| {label} | not measured ({gaps}) | not measured |")
    md += matched_target(x, t)
    need = t["min_speedup"]
    dense = row_at(x.sweep, 1.0, exact=True)
    label = f"LC >= {need:g}x faster than rho = 1, {where} (ms / image, the model's forward on the val images)"
    if default is not None and dense is not None:
        speedup = dense["ms_per_image"] / default["ms_per_image"]
        md.append(f"| {label} | {speedup:.2f}x ({ms(default)} against {ms(dense)} ms) | "
                  f"{status(speedup - need, 'x', '+.2f')} |")
    else:
        md.append(f"| {label} | not measured ({why if default is None else 'no rho = 1 row'}) | not measured |")
    md += ["", "Timings: " + timings(x.environment, "environment.json"), ""]
    return md


def timings(env: Optional[dict], name: str) -> str:
    """Where the timings of results/<name> were taken: the commit, the CPU, its threads, torch."""
    commit = (env or {}).get("commit")
    if not commit:
        return f"the machine and commit were not recorded (`results/{name}` is written by `experiment.sh eval`)."
    return (f"code at commit `{commit[:12]}`" + (" (with local changes)" if env.get("dirty") else "")
            + f", {env.get('cpu', '?')}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')} "
            f"(`results/{name}`).")


def matched_picks(x: Experiment) -> Optional[list]:
    """[(run, label, its sweep's row at the default rule's rho, why)] for LC and DSN of the matched
    sweeps, or None while either sweep is missing."""
    rule = x.spec.get("default", {}).get("min_speedup", 1.0)
    picks = []
    for run, label in x.matched:
        sweep = x.matched_sweeps.get(run)
        if not sweep:
            return None
        rho, why = pick_rho(sweep, rule)
        picks.append((run, label, row_at(sweep, rho, exact=True), why))
    return picks


def matched_target(x: Experiment, t: dict) -> list[str]:
    """LC against DSN on Table 2's budget, each as a cascade at the rho the default rule picks from its
    own sweep (the same speed target for both)."""
    if not x.matched:
        return []
    rule = x.spec.get("default", {}).get("min_speedup", 1.0)
    label = (f"LC >= DSN - {100 * t['lc_vs_dsn']:g} mIoU at the same budget and the same speed target (each network "
             f"as a cascade at its best rho at >= {rule:g}x the speed of its own rho = 1)")
    picks = matched_picks(x)
    if picks is None:
        gaps = "; ".join(f"`{r}` has no rho sweep" for r, _ in x.matched if not x.matched_sweeps.get(r))
        return [f"| {label} | not measured ({gaps}) | not measured |"]
    (_, _, lc, _), (_, _, dsn, _) = picks
    margin = lc["miou"] - (dsn["miou"] - t["lc_vs_dsn"])
    return [f"| {label} | LC {pct(lc['miou'])} at {fmt_rho(lc['rho'])}, DSN {pct(dsn['miou'])} at {fmt_rho(dsn['rho'])} "
            f"({100 * (lc['miou'] - dsn['miou']):+.2f}) | {status(100 * margin, ' points')} |"]


def matched_section(x: Experiment) -> list[str]:
    """LC and DSN of Table 2 run as cascades at the same rhos: what cascade training adds over
    thresholding the heads of a network trained with deep supervision alone."""
    spec = x.spec["matched"]
    (lc, lc_label), (dsn, dsn_label) = x.matched
    md = [f"## {spec['heading']}", "",
          f"`{eval_command(x, '<run>', ' --rhos ' + spec['rhos'])}` for `<run>` = `{lc}` and `{dsn}` "
          "(`results/<run>/rho_sweep.json`): both networks of Table 2 run as cascades at the same rhos. "
          f"{lc_label} was trained as a cascade; {dsn_label}'s heads were trained on every pixel and are "
          "thresholded at test time only. Speed-up: each network's ms at rho = 1 / ms.", ""]
    lc_sweep, dsn_sweep = x.matched_sweeps.get(lc), x.matched_sweeps.get(dsn)
    if not lc_sweep or not dsn_sweep:
        gaps = "; ".join(f"`{r}` {x.missing(r) if x.training_state(r) else 'not evaluated at these rhos'}"
                         for r, sw in ((lc, lc_sweep), (dsn, dsn_sweep)) if not sw)
        return md + [f"Not measured yet: {gaps}."]
    dense = {r: row_at(sw, 1.0, exact=True) for r, sw in ((lc, lc_sweep), (dsn, dsn_sweep))}
    up = lambda run, r: f"{dense[run]['ms_per_image'] / r['ms_per_image']:.2f}x" if dense[run] else "-"  # noqa: E731
    a, b = lc_label, dsn_label
    md += [f"| rho | {a} mIoU (%) | {b} mIoU (%) | {a} - {b} (points) | {a} stopped at stages 1 / 2 (%) | "
           f"{b} stopped at stages 1 / 2 (%) | {a} ms / image (speed-up) | {b} ms / image (speed-up) |",
           "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for r in lc_sweep:
        d = row_at(dsn_sweep, r["rho"], exact=True)
        if d is None:
            md.append(f"| {fmt_rho(r['rho'])} | {pct(r['miou'])} | not measured | | | | | |")
            continue
        gaps.append((r["miou"] - d["miou"], r["rho"]))
        md.append(f"| {fmt_rho(r['rho'])} | {pct(r['miou'])} | {pct(d['miou'])} | {100 * (r['miou'] - d['miou']):+.1f} | "
                  f"{pct(r['stop_fractions'][0])} / {pct(r['stop_fractions'][1])} | "
                  f"{pct(d['stop_fractions'][0])} / {pct(d['stop_fractions'][1])} | "
                  f"{ms(r)} ({up(lc, r)}) | {ms(d)} ({up(dsn, d)}) |")
    if gaps:
        lo, hi = min(gaps), max(gaps)
        ahead = sum(g > 0 for g, _ in gaps)
        md += ["", f"{a} - {b} at the same rho: from {100 * lo[0]:+.1f} points (rho = {fmt_rho(lo[1])}) to "
               f"{100 * hi[0]:+.1f} (rho = {fmt_rho(hi[1])}); {a} ahead at {ahead} of {len(gaps)} rhos."]
    picks = matched_picks(x)
    if picks:
        md += ["Each at the shipped model's rule for its default rho, applied to its own sweep: "
               + "; ".join(f"{label} {pct(r['miou'])} at rho = {fmt_rho(r['rho'])} ({up(run, r)}: {why})"
                           for run, label, r, why in picks) + "."]
    return md


def training_summary(x: Experiment, labels: dict) -> list[str]:
    """Per run and phase: steps, the loss at its start and end, the throughput, the time it took."""
    md = ["## Training runs, from their logs", "",
          "From `results/<run>/log.jsonl` (a record every few steps): the loss (summed over the heads the phase "
          "trains, class-weighted as the recipe says) at the phase's first record and averaged over its last "
          "five, the median training throughput, and the compute time (images over throughput, pauses left out); "
          "for the cascade phase, the share of the pixels that reached stages 2 and 3 at its last record.", "",
          "| run | phase | steps | loss, first -> last | images / s | hours | reached stages 2 / 3 (%) |",
          "|---|---|---|---|---|---|---|"]
    for run in x.runs:
        log, config = x.logs.get(run), x.configs.get(run) or {}
        if not log:
            md.append(f"| {labels[run]} | {x.missing(run)} | | | | | |")
            continue
        batch, previous, offset = config.get("batch_size", 8), 0, x.step_offset(run)
        phases: dict[str, list] = {}
        for r in log:
            phases.setdefault(r["phase"], []).append(r)
        for phase, records in phases.items():
            last = records[-1]["step"]
            start = previous
            seconds = 0.0
            for r in records:
                if r.get("img_per_s"):
                    seconds += (r["step"] - start) * batch / r["img_per_s"]
                start = r["step"]
            tail = statistics.fmean(r["loss"] for r in records[-5:])
            rate = statistics.median(r["img_per_s"] for r in records if r.get("img_per_s"))
            fractions = records[-1].get("region_fractions") or []
            reached = " / ".join(pct(f) for f in fractions[1:]) if phase == "cascade" else ""
            md.append(f"| {labels[run]} | {phase} | {offset + previous + 1}-{offset + last} | "
                      f"{records[0]['loss']:.2f} -> {tail:.2f} | "
                      f"{rate:.2f} | {seconds / 3600:.2f} | {reached} |")
            previous = last
        state = x.training_state(run)
        if state:
            md.append(f"| {labels[run]} | ({state}) | | | | | |")
    return md + [""]


def build(x: Experiment, figures: bool = False, data_root: Optional[Path] = None) -> str:
    spec = x.spec
    default, why = x.default()
    t2 = spec.get("table2", {})
    labels = x.labels()
    if figures:
        if any(x.logs.values()):
            training_curves(x, x.results / "training_curves.png")
        if default is not None:
            stage_distribution_plot(default, x.results / "stage_distribution.png")
        if data_root is not None:
            stage_map_grid(x, data_root, x.results / "stage_maps.png")
    pictures = pictured(x)
    sweep_rel = f"results/{x.sweep_run}/rho_sweep.json"

    md = [f"# {spec['title']}", ""]
    md += [
        "Every number below is read from a file in [`results/`](results) by `make_results.py`; each file was "
        "written by the command given beside its table (`experiment.sh` holds them all).", ""]
    md += [render((x.folder / spec.get("setup", "setup.md")).read_text(), template_namespace(x)).rstrip(), ""]

    if "targets" in spec:
        md += targets_section(x, default, why)
    if spec.get("training_summary"):
        md += training_summary(x, labels)

    # Table 2
    md += [f"## {t2.get('heading', 'Table 2: the methods on one budget')}", "",
           f"`{eval_command(x, '<method>')}` "
           "(plain, DSN and DSN + dropout at rho = 1, the networks they are; MC and LC at the training rho):", "",
           "| method | rho | mIoU (%) | pixel acc. (%) | ms / image | MACs (% of dense) | paper (VOC, IRNet) |",
           "|---|---|---|---|---|---|---|"]
    paper = t2.get("paper", {})
    for run, label in x.table2:
        e = x.evals.get(run)
        if e is None:
            md.append(f"| {label} | {x.missing(run)} | | | | | {paper.get(run, '')} |")
            continue
        md.append(f"| {label} | {fmt_rho(e['rho'])} | {pct(e['miou'])} | {pct(e['pixel_accuracy'])} | "
                  f"{ms(e)} | {pct(e['mac_ratio'])} | {paper.get(run, '')} |")
    if t2.get("default_row") and default is not None:
        md.append(f"| LC at the rho {why} | {fmt_rho(default['rho'])} | {pct(default['miou'])} | "
                  f"{pct(default['pixel_accuracy'])} | {ms(default)} | {pct(default['mac_ratio'])} | |")
    class_names = next((e["class_names"] for e in [*x.evals.values(), *x.sweep] if e), None)
    if class_names:
        md += ["", "Per-class IoU (%):", "",
               "| method | " + " | ".join(class_names) + " |",
               "|---|" + "---|" * len(class_names)]
        for run, label in x.table2:
            e = x.evals.get(run)
            md.append(f"| {label} | " + (" | ".join(pct(v) for v in e["iou"]) if e else
                                         x.missing(run) + " |" * (len(class_names) - 1)) + " |")

    if x.table2_environment:
        md += ["", "Timings of the runs evaluated by `experiment.sh eval-b`: " + timings(x.table2_environment,
                                                                                   "table2_environment.json")]
    if x.matched:
        md += [""] + matched_section(x)
    if x.long:
        md += long_run_section(x, default, why, labels, class_names)

    # Table 1 (and 3's speed-up) from the sweep
    sw = spec.get("sweep")
    if sw:
        md += ["", "## Table 1: rho against where pixels stop, accuracy and time (LC)", ""]
        if not x.sweep:
            md += [f"Not measured yet: `{x.sweep_run}` {x.missing(x.sweep_run)}, no `{sweep_rel}` "
                   f"(`{eval_command(x, x.sweep_run, ' --rhos ' + sw['rhos'])}`).", ""]
        else:
            speed = sw.get("speedup")
            dense = row_at(x.sweep, 1.0, exact=True)
            md += [f"`{eval_command(x, x.sweep_run, ' --rhos ' + sw['rhos'])}` "
                   f"(also `results/{x.sweep_run}/rho_sweep.{{csv,json,png}}`)"
                   + (f"; speed-up = ms at rho = 1 / ms; **bold**: the default rho ({why})" if speed else "") + ":", "",
                   "| rho | stopped at stage 1 (%) | at stage 2 (%) | reach stage 3 (%) | mIoU (%) | ms / image | "
                   + ("speed-up | " if speed else "") + "MACs (% of dense) |",
                   "|---|---|---|---|---|---|---|" + ("---|" if speed else "")]
            for r in x.sweep:
                s = r["stop_fractions"]
                rho = fmt_rho(r["rho"])
                if speed and default is not None and same_rho(r["rho"], default["rho"]):
                    rho = f"**{rho}**"
                up = (f"{dense['ms_per_image'] / r['ms_per_image']:.2f}x | " if dense else "- | ") if speed else ""
                md.append(f"| {rho} | {pct(s[0])} | {pct(s[1])} | {pct(s[2])} | {pct(r['miou'])} | "
                          f"{ms(r)} | {up}{pct(r['mac_ratio'])} |")
            md += ["", "Paper (VOC, IRNet): rho = 0.985 stops 23% at stage 1 and 29% at stage 2; rho = 0.9 stops 44% and 31%.",
                   ""]
            if sw.get("per_class"):
                names = x.sweep[0]["class_names"]
                md += ["Per-class IoU (%) against rho:", "", "| rho | " + " | ".join(names) + " |",
                       "|---|" + "---|" * len(names)]
                md += [f"| {fmt_rho(r['rho'])} | " + " | ".join(pct(v) for v in r["iou"]) + " |" for r in x.sweep]
                md.append("")
            md += [f"![mIoU and time against rho](results/{x.sweep_run}/rho_sweep.png)", ""]

        # Table 3
        md += ["## Table 3: accuracy against speed", ""]
        dense = row_at(x.sweep, 1.0, exact=True)
        if dense is None:
            md += ["Not measured yet (no rho = 1 row: the sweep above has not run).", ""]
        else:
            md += [f"From the same sweep (`{sweep_rel}`)" + (" and the calibration below" if x.calibrations else "")
                   + "; speed-up = ms at rho = 1 / ms:", "",
                   "| network | rho | mIoU (%) | ms / image | FPS | speed-up | MAC ratio | speed-up / MAC bound |",
                   "|---|---|---|---|---|---|---|---|"]
            picks = [("dense network (every pixel through every stage)", dense)]
            is_default = (lambda rho: "min_speedup" in spec.get("default", {}) and default is not None
                          and same_rho(default["rho"], rho))
            picks += [(f"LC, the default rho ({why})" if is_default(rho) else "LC", row_at(x.sweep, rho, exact=True))
                      for rho in spec.get("table3_rhos", [])]
            picks += [(f"LC, calibrated for {float(b):.0%} of the MACs", c["result"] if c else None)
                      for b, c in x.calibrations.items()]
            if default is not None and "min_speedup" in spec.get("default", {}) and \
                    not any(is_default(rho) for rho in spec.get("table3_rhos", [])):
                picks.append((f"LC, the default rho ({why})", default))
            for label, r in picks:
                if r is None:
                    md.append(f"| {label} | not measured | | | | | | |")
                    continue
                speedup = dense["ms_per_image"] / r["ms_per_image"]
                bound = 1 / r["mac_ratio"]
                md.append(f"| {label} | {fmt_rho(r['rho'])} | {pct(r['miou'])} | {ms(r)} | "
                          f"{1e3 / r['ms_per_image']:.1f} | {speedup:.2f}x | {r['mac_ratio']:.2f} | "
                          f"{100 * speedup / bound:.0f}% |")
            md += ["", "Paper (Titan X, 512x512): IRNet 9 FPS; LC 15 FPS at rho = 0.985 and 18 FPS at rho = 0.95.", ""]

    if x.calibrations:
        md += ["## calibrate_rho at two budgets" if len(x.calibrations) == 2 else "## calibrate_rho", "",
               f"`{eval_command(x, x.sweep_run, ' --rhos ' + spec['calibration_rhos'] + ' --budget B', f'{x.rel}/results/{x.sweep_run}/budgetB')}` "
               "(`sparsecascade.calibrate_rho(model, val, budget=B)`: "
               "the best val mIoU whose executed MACs are at most B of the dense network's):", "",
               "| budget (share of dense MACs) | rho picked | MACs used (%) | mIoU (%) | ms / image | stopped at stages 1 / 2 (%) |",
               "|---|---|---|---|---|---|"]
        for b, c in x.calibrations.items():
            if c is None:
                md.append(f"| {float(b):.0%} | not measured | | | | |")
                continue
            r = c["result"]
            md.append(f"| {float(b):.0%} | {fmt_rho(c['rho'])} | {pct(r['mac_ratio'])} | {pct(r['miou'])} | "
                      f"{ms(r)} | {pct(r['stop_fractions'][0])} / {pct(r['stop_fractions'][1])} |")
        md.append("")

    if default is not None:
        source = (f"results/{x.sweep_run}/budget{spec['default']['calibration']}/calibration.json"
                  if "calibration" in spec.get("default", {}) else sweep_rel)
        md += [f"## Which classes stop early (the paper's Figure 5), LC at rho = {fmt_rho(default['rho'])}", "",
               f"From `{source}`: the share of each class's labelled val pixels decided at "
               "each stage.", "", "| class | stage 1 (%) | stage 2 (%) | stage 3 (%) | IoU (%) |", "|---|---|---|---|---|"]
        order = sorted(range(len(default["class_names"])), key=lambda c: -(default["stage_distribution"][c][0] or 0))
        for c in order:
            d = default["stage_distribution"][c]
            md.append(f"| {default['class_names'][c]} | {pct(d[0])} | {pct(d[1])} | {pct(d[2])} | {pct(default['iou'][c])} |")
        md += ["", "![stage distribution per class](results/stage_distribution.png)", ""]

    if pictures:
        md += ["## Stage maps (the paper's Figures 4 and 6)", "",
               f"`sparsecascade segment {x.data_root}/val/{{{','.join(pictures)}}}.png --model {x.name} "
               f"--out {x.rel}/results/pictures` (the shipped model at its default rho). Columns: image, "
               "ground truth, LC labels, the stage that decided each pixel (green 1, yellow 2, red 3).", "",
               "![stage maps](results/stage_maps.png)", ""]

    md += ["## The shipped weights", ""]
    shipped_cmd = (f"sparsecascade eval --pretrained {x.name} --dataset camvid --size {x.size[0]} {x.size[1]} "
                   f"--max-images {spec.get('shipped_images', 10)} --out {x.rel}/results/shipped")
    if x.shipped is None:
        md += [f"Not published yet: `{x.experiment} publish` writes the fp16 weights into the package "
               f"(`sparsecascade/weights/{x.name}/`) and measures them (`{shipped_cmd}`).", ""]
    else:
        s = x.shipped
        md += [f"The fp16 weights published in the package (`sparsecascade/weights/{x.name}/`; `zoo/publish.py` "
               f"builds the Hub folder from them) at their default rho = {fmt_rho(s['rho'])}, on the first "
               f"{s['num_images']} val images: mIoU {pct(s['miou'])}%, stopped at stages 1/2: "
               f"{pct(s['stop_fractions'][0])}% / {pct(s['stop_fractions'][1])}% (`{shipped_cmd}`). "
               "`tests/test_zoo_camvid.py` measures this again on every test run while they are the package's "
               "default model.", ""]

    discussion = x.folder / spec.get("discussion", "discussion.md")
    if discussion.is_file():
        md += [discussion.read_text().rstrip(), ""]
    return "\n".join(md) + "\n"


def long_run_section(x: Experiment, default, why, labels, class_names) -> list[str]:
    """The shipped run, on its own budget (not comparable with Table 2's rows)."""
    run, long = x.long["run"], x.long
    cfg = x.configs.get(run) or {}
    md = ["", f"## {long['heading']}", "", long.get("text", "").strip(), ""]
    md += [f"The rho sweep below (`results/{x.sweep_run}/rho_sweep.json`: the training and the default rho) and "
           f"`{eval_command(x, run, ' --head K')}` (stage K's head alone: every pixel stops at stage K; "
           "`eval_headK.json`; stage 3's head alone is rho = 1):", "",
           "| network | rho | mIoU (%) | pixel acc. (%) | ms / image | MACs (% of dense) |", "|---|---|---|---|---|---|"]
    at_training_rho = x.evals.get(run)  # eval.json, else the sweep's row at the training rho (the same pass)
    if at_training_rho is None and run == x.sweep_run and cfg.get("rho") is not None:
        at_training_rho = row_at(x.sweep, cfg["rho"], exact=True)
    rows = [(f"{labels[run]}, at the training rho", at_training_rho)]
    rows += [(f"stage {k}'s head alone", x.head(run, k)) for k in long.get("heads", [])]
    if default is not None:
        rows.append((f"{labels[run]}, at the default rho ({why})", default))
    extra_iou = []
    for label, e in rows:
        if e is None:
            md.append(f"| {label} | {x.missing(run)} | | | | |")
            continue
        md.append(f"| {label} | {fmt_rho(e['rho'])} | {pct(e['miou'])} | {pct(e['pixel_accuracy'])} | {ms(e)} | "
                  f"{pct(e['mac_ratio'])} |")
        extra_iou.append((label, e))
    for other in long.get("heads_of", []):  # a Table 2 run's heads, for comparison (its budget, not this one)
        for k in long.get("heads", []):
            e = x.head(other, k)
            label = f"{labels[other]} (Table 2's budget): stage {k}'s head alone"
            if e is None:
                md.append(f"| {label} | {x.missing(other)} | | | | |")
            else:
                md.append(f"| {label} | {fmt_rho(e['rho'])} | {pct(e['miou'])} | {pct(e['pixel_accuracy'])} | {ms(e)} | "
                          f"{pct(e['mac_ratio'])} |")
                extra_iou.append((label, e))
    if class_names and extra_iou:
        md += ["", "Per-class IoU (%):", "", "| network | " + " | ".join(class_names) + " |",
               "|---|" + "---|" * len(class_names)]
        md += [f"| {label} | " + " | ".join(pct(v) for v in e["iou"]) + " |" for label, e in extra_iou]
    parts = [(r, x.configs.get(r)) for r in x.chain]
    if all(c for _, c in parts):
        steps = sum(c["steps"] for _, c in parts)
        images = sum(c["steps"] * c["batch_size"] for _, c in parts)
        how = (" (" + ", then ".join(f"`{r}` {c['steps']}" for r, c in parts) + ", each run starting from the "
               "weights of the one before, with a fresh schedule)") if x.earlier else ""
        md += ["", f"Its budget: {steps} steps of batch {cfg['batch_size']}{how}: {images} images, "
               f"{images / x.spec.get('train_images', 367):.1f} epochs."]
    fit = x.train_split(run)  # the same evaluation on the images it trained on
    if fit is not None and default is not None:
        command = eval_command(x, run, f" --split train --rho {fmt_rho(fit['rho'])}", f"{x.rel}/results/{run}/train_split")
        md += ["", f"Does it fit its training images? `{command}` "
               f"(the {fit['num_images']} training images, evaluated as val is: whole, resized, no augmentation): "
               f"mIoU {pct(fit['miou'])}% and pixel accuracy {pct(fit['pixel_accuracy'])}% at rho = {fmt_rho(fit['rho'])}, "
               f"against {pct(default['miou'])}% and {pct(default['pixel_accuracy'])}% on val at rho = {fmt_rho(default['rho'])}."]
    return md


def card_text(x: Experiment) -> Optional[str]:
    """README.md with its generated block (status, headline numbers, targets) brought up to date; None
    when the experiment has no card or the card no block."""
    card = x.folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text()
    if CARD_BEGIN not in text or CARD_END not in text:
        return None
    default, why = x.default()
    lines = [CARD_BEGIN, f"<!-- generated by `python zoo/make_results.py {x.rel}` from results/: edit results_spec.json "
             "or zoo/make_results.py, not this block -->", ""]
    shipped = (REPO / "sparsecascade" / "weights" / x.name / "model.safetensors").is_file()
    lines += [("**Ships with the package** (`sparsecascade/weights/" + x.name + "/`): it loads offline."
               if shipped else f"**Not in the package yet**: `{x.experiment} publish` puts it there once it is "
               "trained and measured; until then `from_pretrained` says so."), ""]
    if default is None:
        lines += [f"Not measured yet ({why}); [results.md](results.md) shows what has been measured so far.", ""]
    else:
        dense = row_at(x.sweep, 1.0, exact=True)
        paper = row_at(x.sweep, 0.985, exact=True)
        lines += [f"CamVid val, all {default['num_images']} images, {x.size[0]}x{x.size[1]} input scored at 360x480 "
                  f"(`{x.experiment} eval`). The default rho = {fmt_rho(default['rho'])}: {why}, on these images:", "",
                  "| rho | mIoU (%) | stopped at stages 1 / 2 (%) | MACs (% of dense) | ms / image | speed-up |",
                  "|---|---|---|---|---|---|"]
        rows = [(r, note) for r, note in ((dense, " (dense)"), (paper, " (the paper's)"), (default, " (default)"))
                if r is not None]
        for r, note in rows:
            if r is paper and default is not None and same_rho(paper["rho"], default["rho"]):
                continue
            up = f"{dense['ms_per_image'] / r['ms_per_image']:.2f}x" if dense else "-"
            lines.append(f"| {fmt_rho(r['rho'])}{note} | {pct(r['miou'])} | {pct(r['stop_fractions'][0])} / "
                         f"{pct(r['stop_fractions'][1])} | {pct(r['mac_ratio'])} | {ms(r)} | {up} |")
        lines += ["", "Per class at the default rho (IoU, %): "
                  + ", ".join(f"{n} {pct(v)}" for n, v in zip(default["class_names"], default["iou"])) + ".", ""]
    if "targets" in x.spec:
        section = targets_section(x, default, why)
        lines += ["#" + section[0]] + section[1:]
    lines.append(CARD_END)
    start, end = text.index(CARD_BEGIN), text.index(CARD_END) + len(CARD_END)
    return text[:start] + "\n".join(lines) + text[end:]


def record_environment(x: Experiment, name: str = "environment.json") -> Path:
    """results/<name>: the commit, torch, the CPU and its threads the timings were taken with."""
    import datetime
    import platform
    import subprocess

    import torch

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = dict(commit=git("rev-parse", "HEAD"), dirty=bool(git("status", "--porcelain", "--untracked-files=no")),
               torch=torch.__version__, cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    x.results.mkdir(parents=True, exist_ok=True)
    path = x.results / name
    path.write_text(json.dumps(env, indent=2) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="the experiment folder, e.g. zoo/lc-vgg16-camvid")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="CamVid (for the ground truth of the pictures); default $SPARSECASCADE_CAMVID, else the spec's")
    parser.add_argument("--markdown", type=Path, help="where results.md goes (default: the experiment folder)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="the text alone (the tests check results.md against the files this way)")
    parser.add_argument("--no-card", dest="card", action="store_false",
                        help="leave README.md's generated block as it is")
    parser.add_argument("--print-default-rho", action="store_true",
                        help="print the rho the default rule picks from the sweep, and nothing else")
    parser.add_argument("--record-environment", nargs="?", const="environment.json", metavar="NAME",
                        help="write results/NAME (commit, torch, CPU, threads; default environment.json, where the "
                             "shipped run is timed) and nothing else")
    args = parser.parse_args(argv)
    if not (args.experiment / SPEC_NAME).is_file():
        parser.error(f"{args.experiment}: expected an experiment folder with {SPEC_NAME}")
    x = Experiment(args.experiment)
    if args.record_environment:
        if Path(args.record_environment).name != args.record_environment or not args.record_environment.endswith(".json"):
            parser.error(f"--record-environment: expected a file name ending in .json, got {args.record_environment!r}")
        print(f"wrote {record_environment(x, args.record_environment)}")
        return 0
    if args.print_default_rho:
        default, why = x.default(published=False)  # for the publish to come, not the last one
        if default is None:
            print(f"{x.name}: no default rho ({why}); run `{x.experiment} eval` first", file=sys.stderr)
            return 1
        print(f"{fmt_rho(default['rho'])}")
        return 0
    data_root = args.data_root or Path(os.environ.get("SPARSECASCADE_CAMVID") or os.environ.get("CAMVID_ROOT")
                                       or REPO / x.data_root)
    markdown = build(x, figures=args.figures, data_root=data_root if data_root.is_dir() else None)
    out = args.markdown or x.folder / "results.md"
    out.write_text(markdown)
    print(f"wrote {out}")
    if args.card and args.markdown is None:
        card = card_text(x)
        if card is not None:
            (x.folder / "README.md").write_text(card)
            print(f"updated {x.folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
