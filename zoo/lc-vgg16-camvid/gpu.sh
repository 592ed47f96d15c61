#!/usr/bin/env bash
# lc-vgg16-camvid on a lent GPU (the `device` tool): one call of under 9 minutes trains the shipped
# model further on CamVid train, as many steps as a time budget allows, and brings the weights back.
# The CPU runs of experiment.sh saw 13600 training images in ~10 hours; an H100 should see that many
# in minutes (unmeasured: the training loop has not run on a GPU yet), and the shipped model is underfit (results.md: its mIoU on training images is no higher
# than on val). Run from the repository root.
#
#   bash zoo/lc-vgg16-camvid/gpu.sh pack      # here: CamVid train -> .camvid_pack/ (~9 MB: WebP q75
#                                             # images, the labels exact in one xz file) for the device's
#                                             # 64 MiB limit on what travels (the tree holds ~56.5 MB)
#   device run, carry [".camvid_pack"], timeout_s 560:
#       BUDGET_S=330 bash zoo/lc-vgg16-camvid/gpu.sh train
#                                             # there: install, unpack, a 15-step throughput probe, then
#                                             # the run sized to BUDGET_S seconds of training; into $OUT:
#                                             # run_config.json, log.jsonl, model_config.json and the fp16
#                                             # weights in parts of 15 MiB (the tool brings back 8 files
#                                             # of at most 16 MiB)
#   bash zoo/lc-vgg16-camvid/gpu.sh unpack DIR   # here: DIR (the call's files_at) -> runs/camvid_vgg16/lc_gpu/
#                                             # {model/ (a save_pretrained folder), log.jsonl, config.json}
#
# Then, here: sparsecascade eval --pretrained runs/camvid_vgg16/lc_gpu/model --dataset camvid \
#   --data-root ../shared/data/camvid --size 270 360 --rhos ... (and publish.py from that folder).
# The run starts from the shipped weights (the HED file, 59 MB, does not fit the 64 MiB that travels):
# a DSN phase on every pixel, then cascade training at the shipped model's own rho (its config.json), crops
# at the evaluation size 270x360 from images scaled 0.5-1.0, batch 16. The training images travel as
# WebP (quality 75), so the GPU run sees compression artefacts the CPU runs did not; labels are exact.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACK=.camvid_pack
PY=${PYTHON:-python3}

case "${1:-}" in
    pack)
        DATA=${SPARSECASCADE_CAMVID:-../shared/data/camvid}
        rm -rf "$PACK.tmp" && mkdir -p "$PACK.tmp/train"
        $PY - "$DATA" "$PACK.tmp" <<'EOF'
import json, lzma, sys
from pathlib import Path
import numpy as np
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
images = sorted((src / "train").glob("*.png"))
if len(images) != 367:
    sys.exit(f"{src}/train: expected CamVid's 367 training images, found {len(images)}")
labels = []
for path in images:
    Image.open(path).convert("RGB").save(dst / "train" / (path.stem + ".webp"), quality=75)
    labels.append(np.asarray(Image.open(src / "trainannot" / path.name)))
labels = np.stack(labels)
(dst / "labels.xz").write_bytes(lzma.compress(labels.tobytes(), preset=9 | lzma.PRESET_EXTREME))
(dst / "labels.json").write_text(json.dumps({"names": [p.name for p in images], "shape": labels.shape}))
EOF
        rm -rf "$PACK" && mv "$PACK.tmp" "$PACK"
        du -sh "$PACK" ;;
    train)
        : "${OUT:?OUT: the output folder of the device tool}"
        # BUDGET_S: seconds of training; DEVICE, BATCH, CROP, MIN_STEPS: a dry run of this logic on a CPU
        # (OUT=/tmp/o DEVICE=cpu BATCH=2 CROP="90 120" MIN_STEPS=2 BUDGET_S=1 bash zoo/lc-vgg16-camvid/gpu.sh train)
        BUDGET_S=${BUDGET_S:-330} DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-16} CROP=${CROP:-270 360} MIN_STEPS=${MIN_STEPS:-40}
        export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 SPARSECASCADE_TRITON_CONFIG=fixed
        nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
        $PY -m pip install -q --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
        DATA=/tmp/camvid && mkdir -p $DATA/train $DATA/trainannot
        $PY - $PACK $DATA <<'EOF'   # back to PNG files under the names the CamVid reader expects
import json, lzma, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
from PIL import Image
pack, data = Path(sys.argv[1]), Path(sys.argv[2])
index = json.loads((pack / "labels.json").read_text())
labels = np.frombuffer(lzma.decompress((pack / "labels.xz").read_bytes()), np.uint8).reshape(index["shape"])
def png(path):
    Image.open(path).convert("RGB").save(data / "train" / (path.stem + ".png"))
with ProcessPoolExecutor() as pool:
    list(pool.map(png, sorted((pack / "train").glob("*.webp"))))
for name, label in zip(index["names"], labels):
    Image.fromarray(label).save(data / "trainannot" / name)
EOF
        # a recipe without the HED file (not here): every weight comes from the shipped model
        $PY -c 'import json,sys; r=json.load(open(sys.argv[1])); r["backbone_weights"]=None; json.dump(r,open(sys.argv[2],"w"))' \
            recipes/camvid_lc_vgg16.json /tmp/recipe.json
        common=(--recipe /tmp/recipe.json --data-root $DATA --device "$DEVICE" --workers 12 --no-progress
                --init-weights sparsecascade/weights/lc-vgg16-camvid/model.safetensors
                --crop-size $CROP --batch-size "$BATCH" --lr 0.001 --ckpt-every 1000 --log-every 5)
        start=$SECONDS
        sparsecascade train "${common[@]}" --mode dsn --steps 15 --dsn-steps 15 --out /tmp/probe >/tmp/probe.out 2>&1 \
            || { cat /tmp/probe.out; exit 1; }
        rate=$($PY -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["img_per_s"])' /tmp/probe/log.jsonl)
        steps=$($PY -c "print(max($MIN_STEPS, int($BUDGET_S * $rate / $BATCH)))")
        echo "probe: $rate images/s in DSN ($((SECONDS - start)) s with start-up); training $steps steps"
        rho=$($PY -c 'import json; from sparsecascade.rho import format_rho
print(format_rho(json.load(open("sparsecascade/weights/lc-vgg16-camvid/config.json"))["rho"]))')
        sparsecascade train "${common[@]}" --steps "$steps" --dsn-steps $((steps * 3 / 4)) --rho "$rho" \
            --out /tmp/lc_gpu 2>&1 | tail -5
        cp /tmp/lc_gpu/log.jsonl "$OUT/log.jsonl" && cp /tmp/lc_gpu/config.json "$OUT/run_config.json"
        $PY - /tmp/lc_gpu/last.pt /tmp/model <<'EOF'
import sys, torch
from sparsecascade.save import save_pretrained
from sparsecascade.train import load_trained_model
model, _ = load_trained_model(sys.argv[1], "cpu")
save_pretrained(model, sys.argv[2], dtype=torch.float16)
EOF
        cp /tmp/model/config.json "$OUT/model_config.json"
        split -b 15M -d /tmp/model/model.safetensors "$OUT/weights.part"
        sha256sum /tmp/model/model.safetensors | tee "$OUT/weights.sha256"
        echo "trained $steps steps in $((SECONDS - start)) s" ;;
    unpack)
        from=$(cd "${2:?usage: gpu.sh unpack DIR}" && pwd)
        run=runs/camvid_vgg16/lc_gpu
        mkdir -p $run/model
        cat "$from"/weights.part* > $run/model/model.safetensors
        (cd $run/model && sed 's#/tmp/model/#./#' "$from/weights.sha256" | sha256sum -c -)
        cp "$from/model_config.json" $run/model/config.json
        cp "$from/log.jsonl" $run/log.jsonl && cp "$from/run_config.json" $run/config.json
        echo "unpacked into $run" ;;
    *) echo "usage: $0 pack | train | unpack DIR" >&2; exit 2 ;;
esac
