#!/usr/bin/env bash
# One command for a CUDA machine: the inference, training and volume benchmarks at SAM3's own
# 1008 px in bf16, all figures in one JSON (default device_check.json). A few minutes on one GPU.
#
#   scripts/device_check.sh                          # CUDA, full-size random SAM3 at 1008 px
#   scripts/device_check.sh --device cpu --quick     # the same pipeline, small, on CPU (CI smoke run)
#   scripts/device_check.sh --out figures.json
#
# What it measures (see each script's --help):
#   inference  scripts/bench_inference.py: ms/image for 1 and 8 prompts (vision pass + prompts,
#              post-processing included), the speed-up over 8 full forwards, peak GPU memory
#   training   scripts/bench_train.py: s/step and peak memory, gradient checkpointing off and on
#              (goal: < 12 GB with it on)
#   volume     scripts/bench_volume.py: slices/s batched vs one slice per pass vs upstream
set -euo pipefail

device=cuda
quick=0
out=device_check.json
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "device_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ "$device" == cuda* ]] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "device_check.sh: error: no CUDA device visible to torch; run with --device cpu (add --quick for a smoke run)" >&2
  exit 2
fi

if [[ $quick == 1 ]]; then
  inference=(--model tiny --resolution 112 --prompts 8 --precision bf16)
  training=(--model tiny --resolution 112 --steps 1 --warmup 0 --queries 2 --precision bf16)
  volume=(--model tiny --resolution 112 --slices 8 --slice-size 64 --batch-size 4 --upstream-slices 1 --precision bf16)
else
  inference=(--model full --resolution 1008 --prompts 8 --precision bf16)
  training=(--resolution 1008 --steps 3 --warmup 1 --queries 4 --precision bf16)
  volume=(--model full --resolution 1008 --slices 32 --slice-size 512 --batch-size 8 --upstream-slices 2 --precision bf16)
fi

cd "$here"
start=$(date +%s)
echo "== inference (${inference[*]})" >&2
"$python" scripts/bench_inference.py --device "$device" "${inference[@]}" --json "$work/inference.json" >&2
echo "== training (${training[*]})" >&2
"$python" scripts/bench_train.py --device "$device" "${training[@]}" --json "$work/training.json" >&2
echo "== volume (${volume[*]})" >&2
"$python" scripts/bench_volume.py --device "$device" "${volume[@]}" --json "$work/volume.json" >&2

"$python" - "$work" "$out" "$device" "$quick" "$start" <<'PY'
import json, platform, sys, time
from pathlib import Path

import torch

work, out, device, quick, start = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
report = {
    "device": device,
    "quick": quick,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "python": platform.python_version(),
    "host": platform.node(),
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "seconds": round(time.time() - start, 1),
}
for name in ("inference", "training", "volume"):
    report[name] = json.loads((work / f"{name}.json").read_text())
Path(out).write_text(json.dumps(report, indent=2) + "\n")
inf = report["inference"]
print(
    f"inference: {inf['ms_per_image_1_prompt']:.0f} ms/image (1 prompt), {inf['ms_per_image_all_prompts']:.0f} ms/image "
    f"({inf['prompts']} prompts), {inf['speedup']}x over {inf['prompts']} full forwards"
    + (f", peak {inf['peak_gpu_gib']} GiB" if inf.get("peak_gpu_gib") is not None else "")
)
for r in report["training"]:
    mem = r.get("peak_gpu_gib", r.get("peak_cpu_rss_gib"))
    print(
        f"training: gradient checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}: "
        f"{r['seconds_per_step']} s/step, peak {mem} GiB ({'GPU' if 'peak_gpu_gib' in r else 'CPU RSS'})"
    )
vol = report["volume"]
print(
    f"volume: {vol['batched_slices_per_s']} slices/s batched, {vol['one_slice_slices_per_s']} one slice per pass, "
    f"{vol['upstream_slices_per_s']} upstream"
)
print(f"-> {out} ({report['seconds']} s)")
PY
