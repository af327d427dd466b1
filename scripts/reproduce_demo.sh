#!/usr/bin/env bash
# Rebuild the offline demo end to end, seeded (issue 25; medsam3/demo/MODEL.md):
#   1. the training sets: the five shared datasets imported with medsam3-import (split by subject),
#      merged with the CT organs of scripts/build_demo_data.py (registry packages)
#   2. stage 1: the base, a small SAM3 trained from scratch on CHAOS, MS-CMRSeg, BraTS and CT
#      (1a: 2400 steps from a random init; 1b: 1200 more from 1a's result, a second, lower cosine cycle)
#   3. stage 2: LoRA adapters for fetal ultrasound (HC18) and dermoscopy (PH2) on the frozen base, with
#      10 / 50 / all images (learning curve), and a full fine-tune with the same data and steps
#   4. thresholds (and the base's 3D clean-up) chosen on the valid split, then every table on the held-out test subjects
#      (scripts/demo_tables.py, through medsam3-evaluate)
#
#   scripts/reproduce_demo.sh [DATASETS]          # default ../shared/datasets; everything under runs/
#   SHIP=1 scripts/reproduce_demo.sh [DATASETS]   # and copy base, adapters, thresholds, examples into medsam3/demo/
# About 4.5 hours on 2 CPU cores (stage 1: ~70 + ~35 min; stage 2: 8 runs of 600 steps, ~25-30 min each, two at a
# time on one thread each, ~2 h; thresholds and tables ~30 min).
set -euo pipefail
DATASETS=$(realpath "${1:-../shared/datasets}")
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=${PYTHON:-python}
t() { local s=$SECONDS; "$@"; echo "[reproduce_demo] $(( (SECONDS - s) / 60 )) min $(( (SECONDS - s) % 60 )) s: $*" >&2; }

t $PY scripts/build_demo_data.py --out runs/demo_data
t $PY scripts/build_demo_sets.py --datasets "$DATASETS" --ct-data runs/demo_data --out runs/demo_sets
rm -rf runs/demo
t $PY scripts/init_demo_base.py runs/demo/base_init --resolution 224 --hidden 64 --vision-layers 4 --seed 0
t $PY train_sam3_lora_native.py --config configs/demo/base.yaml            # -> runs/demo/base_stage1
t $PY train_sam3_lora_native.py --config configs/demo/base_continue.yaml   # -> runs/demo/base (the shipped base)

stage2() {  # one modality's runs, one after another, on one thread
    local a=$1
    for n in all 10 50; do
        OMP_NUM_THREADS=1 $PY train_sam3_lora_native.py --config configs/demo/adapter_lora.yaml \
            --set training.data_dir=runs/demo_sets/${a}_$n --set output.output_dir=runs/demo/${a}_lora_$n -q
    done
    OMP_NUM_THREADS=1 $PY train_sam3_lora_native.py --config configs/demo/adapter_full.yaml \
        --set training.data_dir=runs/demo_sets/${a}_all --set output.output_dir=runs/demo/${a}_full_all -q
}
s=$SECONDS
stage2 hc18 & p1=$!
stage2 ph2 & p2=$!
wait $p1
wait $p2
echo "[reproduce_demo] stage 2: $(( (SECONDS - s) / 60 )) min" >&2

t $PY scripts/demo_tables.py thresholds --datasets "$DATASETS"
t $PY scripts/demo_tables.py test --datasets "$DATASETS"   # -> runs/demo/tables/test.md (MODEL.md's tables)
if [[ "${SHIP:-0}" == 1 ]]; then
    t $PY scripts/ship_demo.py
    du -sh medsam3/demo
fi
