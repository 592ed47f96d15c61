#!/usr/bin/env bash
# The CamVid experiment: LC and the paper's four baselines (Table 2) on one budget, then every
# measurement of results.md. Run from the repository root; each part is resumable (re-run it).
#
#   bash zoo/lc-resnet18-camvid/experiment.sh train-a   # LC, plain, Model Cascade (one core)
#   bash zoo/lc-resnet18-camvid/experiment.sh train-b   # DSN, DSN + dropout       (the other core)
#   bash zoo/lc-resnet18-camvid/experiment.sh eval      # on an otherwise idle machine: it times
#   bash zoo/lc-resnet18-camvid/experiment.sh publish   # fp16 weights -> the package (Hub folder: build/hub/, untracked)
#   python zoo/make_results.py zoo/lc-resnet18-camvid   # results.md from the files eval wrote
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
        for budget in 0.6 0.4; do                                     # calibrate_rho at two MAC budgets
            evaluate lc --rhos "$RHOS,0.7,0.6,0.5" --budget $budget --out "$RESULTS/lc/budget$budget"
        done
        ;;
    publish)  # the zoo's weights: fp16, the rho calibrated for 60% of the dense MACs, shipped in the package
        # (the one copy git tracks; the Hub folder goes to build/hub/lc-resnet18-camvid, untracked)
        rho=$(python -c "import json; print(json.load(open('$RESULTS/lc/budget0.6/calibration.json'))['rho'])")
        python zoo/publish.py "$RUNS/lc/last.pt" --name lc-resnet18-camvid --dtype float16 --rho "$rho" \
            --shortest-edge 180 --results "$RESULTS/lc/budget0.6/rho_sweep.json" --ship --dry-run
        # what the shipped copy measures on the first 10 val images (tests/test_zoo_camvid.py re-measures it)
        sparsecascade eval --pretrained lc-resnet18-camvid --dataset camvid --data-root "$DATA" --size $SIZE \
            --max-images 10 --out "$RESULTS/shipped" --workers 1 --no-progress
        # stage-map pictures (the paper's Figures 4 and 6) of a few val images
        sparsecascade segment "$DATA"/val/0016E5_0{7961,8019,8129,8159}.png --model lc-resnet18-camvid \
            --out "$RESULTS/pictures"
        ;;
    *) echo "usage: $0 train-a | train-b | eval | publish" >&2; exit 2 ;;
esac
