#!/usr/bin/env bash
# The CamVid experiment: LC and the paper's four baselines (Table 2) on one budget, then every
# measurement of results.md. Run from the repository root; each part is resumable (re-run it).
#
#   bash zoo/lc-resnet18-camvid/experiment.sh train-a   # LC, plain, Model Cascade (one core)
#   bash zoo/lc-resnet18-camvid/experiment.sh train-b   # DSN, DSN + dropout       (the other core)
#   bash zoo/lc-resnet18-camvid/experiment.sh eval      # on an otherwise idle machine: it times
#   python zoo/lc-resnet18-camvid/make_results.py       # results.md from the files eval wrote
#
# The two training queues run side by side, one thread each (2 cores: two single-threaded runs
# get more done than one run on two threads). Checkpoints stay in runs/ (not in git); the logs,
# configs and evaluation files are copied into zoo/lc-resnet18-camvid/results/.
set -euo pipefail
DATA=${CAMVID_ROOT:-../shared/data/camvid}
RECIPE=recipes/camvid_lc_resnet18.json
RUNS=${RUNS:-runs/camvid}
RESULTS=zoo/lc-resnet18-camvid/results
SIZE="180 240"    # the evaluation input size (half of CamVid's 360x480; labels stay full size)
RHOS=1,0.995,0.985,0.97,0.95,0.9,0.8

train() {  # train <mode>: the recipe in that mode, same budget
    OMP_NUM_THREADS=1 sparsecascade train --recipe "$RECIPE" --data-root "$DATA" --mode "$1" \
        --out "$RUNS/$1" --workers 1 --no-progress --resume
    mkdir -p "$RESULTS/$1"
    cp "$RUNS/$1/log.jsonl" "$RUNS/$1/config.json" "$RESULTS/$1/"
}

evaluate() {  # evaluate <mode> [extra eval options]: mIoU at the rho the mode is evaluated at
    local mode=$1; shift
    sparsecascade eval --checkpoint "$RUNS/$mode/last.pt" --data-root "$DATA" --size $SIZE \
        --out "$RESULTS/$mode" --workers 1 --no-progress "$@"
}

case "${1:-}" in
    train-a) train lc; train plain; train model_cascade ;;
    train-b) train dsn; train dsn_dropout ;;
    eval)
        for mode in plain dsn dsn_dropout model_cascade lc; do evaluate "$mode"; done   # Table 2
        evaluate lc --rhos "$RHOS"                                    # Tables 1 and 3, Figure 5
        mkdir -p "$RESULTS/lc/budget60" "$RESULTS/lc/budget40"
        evaluate lc --rhos "$RHOS" --budget 0.6 --out "$RESULTS/lc/budget60"   # calibrate_rho
        evaluate lc --rhos "$RHOS" --budget 0.4 --out "$RESULTS/lc/budget40"
        ;;
    *) echo "usage: $0 train-a | train-b | eval" >&2; exit 2 ;;
esac
