#!/usr/bin/env python3
"""ORT fp32 (and int8) vs PyTorch fp32 through the CLI, on the full-size random SAM3 + a MedSAM3-v1 adapter.

Everything goes through the user's commands: ``medsam3-export --onnx`` writes the graphs, then
``infer_sam.py --json`` runs once per backend on the same image and prompts; the detections are
compared (scores, boxes, masks matched by IoU). Random weights say nothing about accuracy: the
int8 line reports how far int8 moves the outputs, not whether they are right.

  python scripts/onnx_parity.py --model full --resolution 504 --work /tmp/parity   # full-size + v1 adapter
  python scripts/onnx_parity.py --model demo --work /tmp/parity_demo                 # the shipped demo
  python scripts/onnx_parity.py --model tiny --work /tmp/parity_tiny                 # seconds

Stages are skipped when their outputs exist in --work (a checkpoint, an export), so a long
full-size run can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
FULL_CONFIG = REPO / "configs" / "full_lora_config.yaml"
PROMPTS = ["liver", "kidney", "spleen", "tumor", "lesion", "liver tumor", "left kidney", "aorta"]


def medsam3_v1_adapter(model, rank: int = 16, seed: int = 0) -> dict:
    """A random adapter in MedSAM3-v1's ``.pt`` layout (Meta names, fused qkv) for the targets of full_lora_config."""
    import torch

    from medsam3.adapters.upstream import meta_module_for
    from medsam3.config import load_config
    from medsam3.model.lora_targets import select_lora_targets

    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    state = {}
    for hf in select_lora_targets(model.named_modules(), load_config(FULL_CONFIG).lora):
        mapping, _block = meta_module_for(hf)
        key = mapping.meta_module + ".lora.lora_"
        if key + "A" in state:
            continue
        in_f = modules[hf].in_features
        out_f = sum(modules[h].out_features for h in mapping.hf_modules)
        state[key + "A"] = torch.randn(in_f, rank, generator=gen) / in_f**0.5
        state[key + "B"] = torch.randn(rank, out_f, generator=gen) * 0.02
    return state


def prepare(args) -> tuple[list[str], str]:
    """Config overrides and --weights for the model under test (a checkpoint and adapter written to --work)."""
    if args.model == "demo":
        return [], "demo"
    import torch

    from medsam3.testing import build_tiny_checkpoint, random_sam3

    ckpt = args.work / f"{args.model}_sam3_{args.resolution or 'default'}"
    adapter = args.work / "medsam3_v1_style.pt"
    if not (ckpt / "config.json").exists():
        if args.model == "tiny":
            build_tiny_checkpoint(ckpt)
            model, _ = random_sam3("tiny")
        else:
            model, processor = random_sam3("full", args.resolution)
            model.save_pretrained(ckpt)
            processor.save_pretrained(ckpt)
        torch.save(medsam3_v1_adapter(model, rank=args.rank), adapter)
        del model
    sets = [f"model.name={ckpt}", f"lora.rank={args.rank}", f"lora.alpha={2 * args.rank}", "hardware.device=cpu"]
    if args.resolution:
        sets.append(f"model.resolution={args.resolution}")
    return sets, str(adapter)


def run(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def detections(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    out = []
    for entry in data["prompts"]:
        for det in entry["detections"]:
            rle = {"size": det["mask"]["size"], "counts": det["mask"]["counts"].encode("ascii")}
            out.append({"prompt": entry["prompt"], "score": det["score"], "mask": rle, "box": det["box_xyxy"]})
    return out


def _iou(a: dict, b: dict) -> float:
    area = mask_utils.area([a, b])
    if area.sum() == 0:
        return 1.0  # both empty: the same mask
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def compare(ref: list[dict], other: list[dict]) -> dict:
    """Per prompt, each detection paired with the other backend's nearest box; score, box and mask differences."""
    worst_score, worst_box, worst_iou, unmatched = 0.0, 0.0, 1.0, 0
    for prompt in sorted({d["prompt"] for d in ref} | {d["prompt"] for d in other}):
        a = [d for d in ref if d["prompt"] == prompt]
        b = [d for d in other if d["prompt"] == prompt]
        unmatched += abs(len(a) - len(b))
        for det in a if b else []:
            dist = [float(np.abs(np.subtract(det["box"], o["box"])).max()) for o in b]
            j = int(np.argmin(dist))
            worst_box = max(worst_box, dist[j])
            worst_score = max(worst_score, abs(det["score"] - b[j]["score"]))
            worst_iou = min(worst_iou, _iou(det["mask"], b[j]["mask"]))
    return {
        "max_score_diff": worst_score,
        "max_box_diff_px": worst_box,
        "min_mask_iou": worst_iou,
        "count_diff": unmatched,
        "detections": len(ref),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["full", "demo", "tiny"], default="full")
    p.add_argument("--resolution", type=int, help="input size (full: 504 or 1008; default: the model's)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the MedSAM3-v1-style adapter (v1: 16)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (checkpoint, adapter, export, outputs)")
    p.add_argument("--image", help="image to segment (default: the demo's first example, or a synthetic scan)")
    p.add_argument("--threshold", type=float, default=0.0, help="0 keeps every query NMS lets through")
    p.add_argument("--json", help="write the comparison here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sets, weights = prepare(args)
    set_args = [a for s in sets for a in ("--set", s)]
    common = ["--config", str(FULL_CONFIG), "--weights", weights, *set_args]
    onnx_dir = args.work / "onnx"
    py = sys.executable
    timings = {}
    if not (onnx_dir / "medsam3_onnx.json").exists():
        timings["export_s"] = run([py, "-m", "medsam3.cli.export", *common, "--onnx", str(onnx_dir), "--int8"])
    image = args.image
    prompts = PROMPTS
    if args.model == "demo":
        image = image or str(REPO / "medsam3" / "demo" / "examples" / "ct_dicom_slice.dcm")
        prompts = ["liver", "spleen", "left kidney", "right kidney", "stomach", "aorta", "brain"]
    if image is None:
        from medsam3.testing import _demo_image

        image = str(_demo_image(args.work / "scan.png"))
    infer = [py, "infer_sam.py", *common, "--image", image, "--prompt", *prompts, "--threshold", str(args.threshold)]
    outputs = {}
    for name, extra in {
        "torch": ["--backend", "torch", "--precision", "fp32"],
        "ort_fp32": ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir), "--precision", "fp32"],
        "ort_int8": ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir), "--precision", "int8"],
    }.items():
        out = args.work / f"{name}.json"
        timings[f"{name}_s"] = run([*infer, *extra, "--json", str(out), "--output", str(args.work / f"{name}.png")])
        outputs[name] = detections(out)
    report = {
        "model": args.model,
        "resolution": args.resolution,
        "ort_fp32_vs_torch": compare(outputs["torch"], outputs["ort_fp32"]),
        "ort_int8_vs_torch": compare(outputs["torch"], outputs["ort_int8"]),
        "wall_s": timings,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    fp32 = report["ort_fp32_vs_torch"]
    ok = fp32["max_score_diff"] <= 1e-4 and fp32["min_mask_iou"] >= 0.999 and fp32["count_diff"] == 0
    print("parity (ORT fp32 vs PyTorch fp32: scores within 1e-4, mask IoU >= 0.999):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
