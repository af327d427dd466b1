#!/usr/bin/env python3
"""What ``hardware.use_compile: true`` does: the vision encoder eager vs ``torch.compile``d, same weights.

Times one vision pass (the part compiled; ~90% of a SAM3 forward) eagerly and compiled, in
alternation so a shared machine slows both alike, reports the one-off compilation time and the
largest difference of the features.

  python scripts/bench_compile.py --model full --resolution 336     # random full-size SAM3, CPU
  python scripts/bench_compile.py --model tiny                      # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from medsam3.inference.predictor import Predictor
from medsam3.model import resolve_device
from medsam3.testing import random_sam3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    model, processor = random_sam3(args.model, args.resolution)
    predictor = Predictor(model, processor, device=device, precision=args.precision)
    image = (np.random.RandomState(0).rand(480, 640, 3) * 255).astype(np.uint8)

    def vision():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats, _ = predictor.encode_images([image])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return feats, time.perf_counter() - t0

    eager_feats, _ = vision()  # warm-up
    encoder = predictor.model.vision_encoder
    predictor.compile_vision_encoder()
    compiled_call = encoder._compiled_call_impl  # what Module.compile installed; None = eager
    compiled_feats, t_compile = vision()  # compiles
    eager, compiled = [], []
    for _ in range(args.repeats):
        encoder._compiled_call_impl = None
        _, t = vision()
        eager.append(t)
        encoder._compiled_call_impl = compiled_call
        _, t = vision()
        compiled.append(t)
    diff = max(
        float((a.float() - b.float()).abs().max())
        for a, b in zip(eager_feats.fpn_hidden_states, compiled_feats.fpn_hidden_states)
    )
    row = {
        "model": args.model,
        "resolution": processor.image_processor.size["height"],
        "device": str(device),
        "precision": "bf16" if predictor.autocast_dtype else "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "compile_s": round(t_compile, 2),
        "eager_vision_s": round(min(eager), 3),
        "compiled_vision_s": round(min(compiled), 3),
        "speedup": round(min(eager) / min(compiled), 3),
        "max_abs_feature_diff": diff,
    }
    print(
        f"{row['model']} {row['resolution']} px {row['device']} {row['precision']}: vision pass eager "
        f"{row['eager_vision_s']:.3f} s, compiled {row['compiled_vision_s']:.3f} s ({row['speedup']:.2f}x; "
        f"best of {args.repeats}), first compiled call {row['compile_s']:.1f} s, max |feature diff| {diff:.1e}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
