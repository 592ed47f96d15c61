#!/usr/bin/env bash
# GPU validation of the Triton region kernels (issue 13), in parts of under 9 minutes each, for a
# bare GPU machine with torch (and triton) preinstalled and no network:
#
#   bash benchmarks/gpu/validate.sh part1     # Triton tests on the GPU (TRITON_INTERPRET=0)
#   bash benchmarks/gpu/validate.sh part2     # correctness at real sizes (fp32/TF32/bf16/fp16), NaN, determinism, > 2^31 elements
#   bash benchmarks/gpu/validate.sh part3     # every autotune config, forward + backward
#   bash benchmarks/gpu/validate.sh part4     # kernel and op time vs cuDNN over f = 1 .. 0.1, batch 1 and 4; threshold op
#   bash benchmarks/gpu/validate.sh part5     # end to end lc_resnet50, 512x512, batch 1 and 8
#   bash benchmarks/gpu/validate.sh part6     # end to end lc_irnet, 512x512, batch 1 and 8
#   bash benchmarks/gpu/validate.sh digest    # one call of under 9 minutes for a session with 15 minutes of
#                                             # device time: part2 without int64 (one config per kernel variant),
#                                             # part4 on the target layer, parts 5 and 6 with one config per
#                                             # layer (no autotuning), the threshold op
#   bash benchmarks/gpu/validate.sh digest2   # under 5 minutes: where the host time goes (cProfile), the
#                                             # > 2^31-element case, part1 on the aligned/TF32/determinism tests
#
# Logs and JSON land in $OUT (default ./gpu_out): partN.log and partN.json (a few files per
# part: the device tool brings back at most 8). Each part installs the package first
# (pip install --no-deps --no-build-isolation -e .), so each can run on a fresh machine.
# Most informative first when device time is short: part4, part2, part5, part1, part6, part3.
# The script's logic (not its numbers) can be dry-run on a CPU under Triton's interpreter:
#   SPARSECASCADE_VALIDATE_DRY=1 TRITON_INTERPRET=1 python benchmarks/gpu/validate.py correctness
set -uo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
PART=${1:?usage: validate.sh part1|part2|part3|part4|part5|part6|digest|digest2}
LOG=$OUT/$PART.log
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1

exec > >(tee -a "$LOG") 2>&1
echo "== $PART $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true

install() {
    if $PY -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
        echo "installed: $($PY -c 'import sparsecascade, torch, triton; print(sparsecascade.__file__, torch.__version__, triton.__version__)')"
    else
        # no setuptools build: a link tree that maps sparsecascade.kernels onto kernels/ (as pyproject does)
        echo "pip install -e failed (see install.log); using a link tree on PYTHONPATH"
        SHIM=$(mktemp -d)
        mkdir "$SHIM/sparsecascade"
        for f in "$ROOT"/sparsecascade/*; do ln -s "$f" "$SHIM/sparsecascade/"; done
        ln -s "$ROOT/kernels" "$SHIM/sparsecascade/kernels"
        export PYTHONPATH=$SHIM${PYTHONPATH:+:$PYTHONPATH}
    fi
    $PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
}

V="$PY benchmarks/gpu/validate.py"
# pytest-xdist spreads the Triton compiles over the CPU cores when it is installed
XDIST=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8" || echo "")
status=0
run() {  # run a step, keep going on failure, remember it
    echo "-- $*"
    local start=$SECONDS
    "$@" || { echo "!! failed ($?): $*"; status=1; }
    echo "-- $((SECONDS - start)) s"
}

install
case "$PART" in
    part1)
        # one compile per kernel variant instead of one per autotune config (part3 covers every config)
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 480 $PY -m pytest -q $XDIST -p no:cacheprovider \
            tests/test_triton_kernels.py tests/test_triton_determinism.py --junitxml="$OUT/part1_junit.xml"
        ;;
    part2)
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 330 $V correctness --out "$OUT/part2.json"
        run timeout 150 $V int64 --out "$OUT/part2_int64.json"
        ;;
    part3)
        run timeout 500 $V configs --out "$OUT/part3.json"
        ;;
    part4)
        run timeout 420 $V kernels --out "$OUT/part4.json"
        run timeout 90 $V threshold --out "$OUT/part4_threshold.json"
        ;;
    part5)
        run timeout 500 $V e2e --model lc_resnet50 --batches 1 8 --out "$OUT/part5.json"
        ;;
    part6)
        run timeout 500 $V e2e --model lc_irnet --batches 1 8 --out "$OUT/part6.json"
        ;;
    digest)
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 80 $V correctness --out "$OUT/digest_correctness.json"
        run timeout 170 $V kernels --cases "3x3 256->256 64x64" --out "$OUT/digest_kernels.json"
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 110 $V e2e --model lc_resnet50 --batches 1 8 --no-prewarm \
            --out "$OUT/digest_e2e.json"
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 180 $V e2e --model lc_irnet --batches 1 8 --no-prewarm \
            --out "$OUT/digest_e2e_irnet.json"
        run timeout 30 $V threshold --out "$OUT/digest_threshold.json"
        ;;
    digest2)
        # what digest leaves out, for what is left of the session's device time (under 5 minutes)
        run timeout 60 $V host --model lc_resnet50 --out "$OUT/digest2_host.json"
        run timeout 100 $V int64 --out "$OUT/digest2_int64.json"
        SPARSECASCADE_TRITON_CONFIG=fixed run timeout 110 $PY -m pytest -q $XDIST -p no:cacheprovider \
            tests/test_triton_kernels.py tests/test_triton_determinism.py \
            -k "aligned or tf32 or strides or residual or padding or determinis or first_argmax" \
            --junitxml="$OUT/digest2_junit.xml"
        ;;
    *)
        echo "unknown part $PART"; exit 2 ;;
esac
echo "== $PART done in $SECONDS s, status $status"
exit $status
