"""results.md from the files experiment.sh wrote: every number read from a file, every file from a command.

    python zoo/lc-resnet18-camvid/make_results.py [--data-root ../shared/data/camvid]

Reads ``results/<mode>/{eval.json,log.jsonl,config.json}``, ``results/lc/rho_sweep.json``,
``results/lc/budget*/calibration.json``, ``results/shipped/eval.json`` and ``results/pictures/``;
writes ``results/training_curves.png``, ``results/stage_distribution.png``,
``results/stage_maps.png`` and ``results.md`` (with ``discussion.md`` appended: the hand-written part).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODES = [("plain", "Plain network (last head only)"), ("dsn", "DSN"), ("dsn_dropout", "DSN + dropout"),
         ("model_cascade", "Model Cascade"), ("lc", "LC (Deep Layer Cascade)")]
EXPERIMENT = "bash zoo/lc-resnet18-camvid/experiment.sh"
PICTURES = ["0016E5_07961", "0016E5_08019", "0016E5_08129", "0016E5_08159"]


def load(path: Path):
    return json.loads(path.read_text())


def pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def row_at(sweep: list, rho: float) -> dict:
    return min(sweep, key=lambda r: abs(r["rho"] - rho))


def training_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for mode, label in MODES:
        log = [json.loads(line) for line in (RESULTS / mode / "log.jsonl").read_text().splitlines()]
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], label=label)
    ax.set_xlabel("step (batch 8)")
    ax.set_ylabel("training loss (summed over the trained heads)")
    ax.set_title("CamVid, lc_resnet18 from scratch: training loss")
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
    ax.set_title(f"Where each class is decided (LC, rho = {result['rho']:g}, CamVid val)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def pictured() -> list[str]:
    """The val images that ``experiment.sh publish`` segmented."""
    return [stem for stem in PICTURES
            if all((RESULTS / "pictures" / f"{stem}_{kind}.png").is_file() for kind in ("labels", "stages"))]


def stage_map_grid(data_root: Path, out: Path) -> None:
    """Image | ground truth | LC labels | stage map, one row per val image (Figures 4 and 6)."""
    from PIL import Image

    from sparsecascade.data import CAMVID_INFO

    palette = np.zeros((256, 3), np.uint8)
    palette[:len(CAMVID_INFO.palette)] = np.asarray(CAMVID_INFO.palette, np.uint8)
    rows = []
    for stem in pictured():
        pics = [RESULTS / "pictures" / f"{stem}_{kind}.png" for kind in ("labels", "stages")]
        image = np.asarray(Image.open(data_root / "val" / f"{stem}.png").convert("RGB"))
        truth = palette[np.asarray(Image.open(data_root / "valannot" / f"{stem}.png"))]
        cells = [image, truth] + [np.asarray(Image.open(p).convert("RGB")) for p in pics]
        rows.append(np.concatenate([c[::2, ::2] for c in cells], axis=1))  # half size: a compact figure
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("CAMVID_ROOT", "../shared/data/camvid")),
                        help="CamVid (for the ground truth of the pictures); default as experiment.sh")
    parser.add_argument("--markdown", type=Path, default=HERE / "results.md", help="where results.md goes")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="the text alone (tests/test_zoo_camvid.py checks results.md against the files)")
    args = parser.parse_args(argv)

    evals = {mode: load(RESULTS / mode / "eval.json") for mode, _ in MODES}
    configs = {mode: load(RESULTS / mode / "config.json") for mode, _ in MODES}
    sweep = sorted(load(RESULTS / "lc" / "rho_sweep.json"), key=lambda r: -r["rho"])
    calibrations = {b: load(RESULTS / "lc" / f"budget{b}" / "calibration.json") for b in ("0.6", "0.4")}
    shipped = load(RESULTS / "shipped" / "eval.json")
    cfg = configs["lc"]
    dense = row_at(sweep, 1.0)
    chosen = calibrations["0.6"]["result"]

    if args.figures:
        training_curves(RESULTS / "training_curves.png")
        stage_distribution_plot(chosen, RESULTS / "stage_distribution.png")
        stage_map_grid(args.data_root, RESULTS / "stage_maps.png")
    pictures = pictured()

    md = ["# lc-resnet18-camvid: the paper's Tables 1-3 on CamVid, measured on a 2-core CPU", ""]
    md += [
        "Every number below is read from a file in [`results/`](results) by `make_results.py`; each file was "
        "written by the command given beside its table (`experiment.sh` holds them all).", "",
        "## Set-up", "",
        f"- Model: `{cfg['model']}` (dilated ResNet-18, output stride 8, three stages, frozen BatchNorm), "
        f"trained **from scratch** (no ImageNet weights can be had here; the frozen BatchNorm statistics are set "
        f"from {cfg['bn_init_images']} training images before step 0, `sparsecascade.bn_init`).",
        f"- Data: CamVid train (367 images) for training, val (101 images) for every number; 11 classes, void ignored.",
        f"- Resolution: training crops {cfg['crop_size'][0]}x{cfg['crop_size'][1]} from images scaled by "
        f"{cfg['scale_range'][0]}-{cfg['scale_range'][1]}; evaluation on images resized to 180x240 (half of "
        f"360x480), scored against the full-size 360x480 labels (logits upsampled).",
        f"- Budget, the same for every method: {cfg['steps']} SGD steps of batch {cfg['batch_size']} "
        f"({cfg['steps'] * cfg['batch_size']} images, {cfg['steps'] * cfg['batch_size'] / 367:.1f} epochs), lr "
        f"{cfg['lr']} (heads x{cfg['head_lr_mult']}), poly decay, momentum {cfg['momentum']}, weight decay "
        f"{cfg['weight_decay']}, gradient clipping {cfg['grad_clip']}. LC: {cfg['dsn_steps']} steps of DSN, then "
        f"{cfg['steps'] - cfg['dsn_steps']} of cascade training at rho = {cfg['rho']}. DSN + dropout drops "
        f"{', '.join(pct(r) for r in configs['dsn_dropout']['drop_ratios'])}% of the labels at stages 1-3 "
        "(the paper's LC drop ratios). Model Cascade trains stage k (and its head) for a third of the steps "
        "with stages before it frozen, on the pixels they pass on at rho.",
        "- Recipe: [`recipes/camvid_lc_resnet18.json`](../../recipes/camvid_lc_resnet18.json); "
        "training logs and configs: `results/<method>/{log.jsonl,config.json}`.",
        "- Machine: 2 x86_64 cores, no GPU, torch 2.13.0+cpu. Training ran as two single-threaded queues side "
        "by side; every timing below was taken with nothing else running, one image at a time "
        "(`ms_per_image`: the model's forward alone, after a warm-up image).", "",
        "```bash",
        f"{EXPERIMENT} train-a & {EXPERIMENT} train-b; wait   # LC + plain + MC | DSN + DSN-dropout",
        f"{EXPERIMENT} eval        # every evaluation below (idle machine)",
        f"{EXPERIMENT} publish     # the shipped fp16 weights, the first-10-images check, the pictures",
        "python zoo/lc-resnet18-camvid/make_results.py", "```", "",
        "![training loss](results/training_curves.png)", "",
    ]

    md += ["## Table 2: the methods on one budget", "",
           "`sparsecascade eval --checkpoint runs/camvid/<method>/last.pt --data-root ../shared/data/camvid "
           "--size 180 240 --out zoo/lc-resnet18-camvid/results/<method>` (plain, DSN and DSN + dropout at "
           "rho = 1, the networks they are; MC and LC at the training rho):", "",
           "| method | rho | mIoU (%) | pixel acc. (%) | ms / image | MACs (% of dense) | paper (VOC, IRNet) |",
           "|---|---|---|---|---|---|---|"]
    paper = dict(plain="72.22", dsn="72.70", dsn_dropout="72.63", model_cascade="44.20", lc="73.91")
    for mode, label in MODES:
        e = evals[mode]
        md.append(f"| {label} | {e['rho']:g} | {pct(e['miou'])} | {pct(e['pixel_accuracy'])} | "
                  f"{e['ms_per_image']:.1f} | {pct(e['mac_ratio'])} | {paper[mode]} |")
    md.append(f"| LC at the rho calibrated for 60% of the MACs | {chosen['rho']:g} | {pct(chosen['miou'])} | "
              f"{pct(chosen['pixel_accuracy'])} | {chosen['ms_per_image']:.1f} | {pct(chosen['mac_ratio'])} | |")
    md += ["", "Per-class IoU (%):", "",
           "| method | " + " | ".join(evals["lc"]["class_names"]) + " |",
           "|---|" + "---|" * len(evals["lc"]["class_names"])]
    for mode, label in MODES:
        md.append(f"| {label} | " + " | ".join(pct(v) for v in evals[mode]["iou"]) + " |")

    md += ["", "## Table 1: rho against where pixels stop, accuracy and time (LC)", "",
           "`sparsecascade eval --checkpoint runs/camvid/lc/last.pt --data-root ../shared/data/camvid --size 180 240 "
           "--rhos 1,0.995,0.985,0.97,0.95,0.9,0.8 --out zoo/lc-resnet18-camvid/results/lc` "
           "(also `results/lc/rho_sweep.{csv,json,png}`):", "",
           "| rho | stopped at stage 1 (%) | at stage 2 (%) | reach stage 3 (%) | mIoU (%) | ms / image | MACs (% of dense) |",
           "|---|---|---|---|---|---|---|"]
    for r in sweep:
        s = r["stop_fractions"]
        md.append(f"| {r['rho']:g} | {pct(s[0])} | {pct(s[1])} | {pct(s[2])} | {pct(r['miou'])} | "
                  f"{r['ms_per_image']:.1f} | {pct(r['mac_ratio'])} |")
    md += ["", "Paper (VOC, IRNet): rho = 0.985 stops 23% at stage 1 and 29% at stage 2; rho = 0.9 stops 44% and 31%.",
           "", "![mIoU and time against rho](results/lc/rho_sweep.png)", ""]

    md += ["## Table 3: accuracy against speed", "",
           "From the same sweep (`results/lc/rho_sweep.json`) and the calibration below; speed-up = ms at rho = 1 / ms:", "",
           "| network | rho | mIoU (%) | ms / image | FPS | speed-up | MAC ratio | speed-up / MAC bound |",
           "|---|---|---|---|---|---|---|---|"]
    picks = [("dense network (every pixel through every stage)", dense)]
    picks += [("LC", row_at(sweep, 0.985)), ("LC", row_at(sweep, 0.95))]
    picks += [(f"LC, calibrated for {float(b):.0%} of the MACs", c["result"]) for b, c in calibrations.items()]
    for label, r in picks:
        speedup = dense["ms_per_image"] / r["ms_per_image"]
        bound = 1 / r["mac_ratio"]
        md.append(f"| {label} | {r['rho']:g} | {pct(r['miou'])} | {r['ms_per_image']:.1f} | "
                  f"{1e3 / r['ms_per_image']:.1f} | {speedup:.2f}x | {r['mac_ratio']:.2f} | {100 * speedup / bound:.0f}% |")
    md += ["", "Paper (Titan X, 512x512): IRNet 9 FPS; LC 15 FPS at rho = 0.985 and 18 FPS at rho = 0.95.", ""]

    md += ["## calibrate_rho at two budgets", "",
           "`sparsecascade eval --checkpoint runs/camvid/lc/last.pt --data-root ../shared/data/camvid --size 180 240 "
           "--rhos 1,0.995,0.985,0.97,0.95,0.9,0.8,0.7,0.6,0.5 --budget B --out "
           "zoo/lc-resnet18-camvid/results/lc/budgetB` (`sparsecascade.calibrate_rho(model, val, budget=B)`: "
           "the best val mIoU whose executed MACs are at most B of the dense network's):", "",
           "| budget (share of dense MACs) | rho picked | MACs used (%) | mIoU (%) | ms / image | stopped at stages 1 / 2 (%) |",
           "|---|---|---|---|---|---|"]
    for b, c in calibrations.items():
        r = c["result"]
        md.append(f"| {float(b):.0%} | {c['rho']:g} | {pct(r['mac_ratio'])} | {pct(r['miou'])} | "
                  f"{r['ms_per_image']:.1f} | {pct(r['stop_fractions'][0])} / {pct(r['stop_fractions'][1])} |")

    md += ["", f"## Which classes stop early (the paper's Figure 5), LC at rho = {chosen['rho']:g}", "",
           "From `results/lc/budget0.6/calibration.json`: the share of each class's labelled val pixels decided at "
           "each stage.", "", "| class | stage 1 (%) | stage 2 (%) | stage 3 (%) | IoU (%) |", "|---|---|---|---|---|"]
    order = sorted(range(len(chosen["class_names"])), key=lambda c: -(chosen["stage_distribution"][c][0] or 0))
    for c in order:
        d = chosen["stage_distribution"][c]
        md.append(f"| {chosen['class_names'][c]} | {pct(d[0])} | {pct(d[1])} | {pct(d[2])} | {pct(chosen['iou'][c])} |")
    md += ["", "![stage distribution per class](results/stage_distribution.png)", ""]

    if pictures:
        md += ["## Stage maps (the paper's Figures 4 and 6)", "",
               f"`sparsecascade segment ../shared/data/camvid/val/{{{','.join(pictures)}}}.png --model lc-resnet18-camvid "
               "--out zoo/lc-resnet18-camvid/results/pictures` (the shipped model at its default rho). Columns: image, "
               "ground truth, LC labels, the stage that decided each pixel (green 1, yellow 2, red 3).", "",
               "![stage maps](results/stage_maps.png)", ""]

    md += ["## The shipped weights", "",
           f"The fp16 weights in the package (`sparsecascade/weights/lc-resnet18-camvid/`, identical to `hub/`) at "
           f"their default rho = {shipped['rho']:g}, on the first {shipped['num_images']} val images: mIoU "
           f"{pct(shipped['miou'])}%, stopped at stages 1/2: {pct(shipped['stop_fractions'][0])}% / "
           f"{pct(shipped['stop_fractions'][1])}% (`sparsecascade eval --pretrained lc-resnet18-camvid --dataset camvid "
           "--size 180 240 --max-images 10 --out zoo/lc-resnet18-camvid/results/shipped`). "
           "`tests/test_zoo_camvid.py` measures this again on every test run.", ""]

    discussion = HERE / "discussion.md"
    if discussion.is_file():
        md += [discussion.read_text().rstrip(), ""]
    args.markdown.write_text("\n".join(md) + "\n")
    print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
