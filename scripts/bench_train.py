#!/usr/bin/env python3
"""Training-step benchmark: full-size SAM3 + LoRA, seconds per step and peak memory, with and without
gradient checkpointing.

The model is built from ``Sam3Config()`` defaults with random weights (no hub needed); LoRA as in
``configs/full_lora_config.yaml``; one step = the trainer's forward (vision once, one row per
query, geometry CLS), SAM3 loss, backward, AdamW step. Each mode runs in a fresh subprocess so the
peak (CUDA: ``max_memory_allocated``; CPU: peak RSS) is that mode's own.

    python scripts/bench_train.py --resolution 336                 # CPU
    python scripts/bench_train.py --device cuda --resolution 1008  # GPU, bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_mode(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Sam3Config, Sam3Model

    sys.path.insert(0, str(REPO))
    from medsam3.config import load_config
    from medsam3.model import add_lora
    from medsam3.testing import tiny_tokenizer
    from medsam3.train.forward import TrainForward, batch_inputs
    from medsam3.train.loss import Sam3Loss
    from medsam3.train.schedule import build_optimizer
    from medsam3.train.setup import enable_gradient_checkpointing

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = load_config(REPO / "configs" / "full_lora_config.yaml")
    if args.model == "tiny":  # the same code path in seconds (scripts/device_check.sh --quick)
        from medsam3.testing import tiny_sam3_config

        config = tiny_sam3_config(args.resolution)
    else:
        config = Sam3Config()
    config.image_size = args.resolution
    config.vision_config.backbone_config.image_size = args.resolution
    t0 = time.perf_counter()
    model = Sam3Model(config)
    model = add_lora(model, cfg.lora).to(device).train()
    build_s = time.perf_counter() - t0
    if args.checkpointing:
        enable_gradient_checkpointing(model)
    forward = TrainForward(model)
    criterion = Sam3Loss()
    optimizer = build_optimizer(model.parameters(), cfg.training)

    class _Proc:  # Trainer only uses processor.tokenizer here
        tokenizer = tiny_tokenizer()

    m = (args.resolution // 14) * 4
    prompts = ["lesion", "liver", "kidney", "spleen"][: args.queries]
    mask = torch.zeros(1, m, m)
    mask[0, m // 4 : m // 2, m // 4 : m // 2] = 1
    queries = [{"boxes": torch.tensor([[0.375, 0.375, 0.25, 0.25]]), "masks": mask, "mask_valid": torch.tensor([True])}]
    queries += [
        {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, m, m), "mask_valid": torch.zeros(0, dtype=torch.bool)}
        for _ in prompts[1:]
    ]
    batch = {
        "prompts": prompts * args.batch_size,
        "pixel_values": torch.randn(args.batch_size, 3, args.resolution, args.resolution),
        "query_image_index": torch.arange(args.batch_size).repeat_interleave(len(prompts)),
    }
    inputs = batch_inputs(batch, _Proc, device)
    targets = queries * args.batch_size
    use_amp = device.type == "cuda" and args.precision == "bf16"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            preds = forward(**inputs)
        loss = criterion(preds, targets)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup :]
    out = {
        "device": str(device),
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "queries_per_image": len(prompts),
        "gradient_checkpointing": args.checkpointing,
        "precision": "bf16 autocast" if use_amp else "fp32",
        "build_s": round(build_s, 1),
        "seconds_per_step": round(sum(timed) / len(timed), 2),
        "step_times": [round(t, 2) for t in times],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device.type == "cuda":
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="full", choices=["full", "tiny"], help="full-size SAM3 (default) or tiny")
    p.add_argument("--resolution", type=int, default=336, help="multiple of 14 (1008 = SAM3's own)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--queries", type=int, default=4, help="prompts per image (1 positive + negatives)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="CUDA only")
    p.add_argument("--modes", default="off,on", help="gradient checkpointing modes to run: off,on")
    p.add_argument("--json", help="also write the figures to this JSON file (scripts/device_check.sh)")
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.resolution % 14:
        p.error("--resolution must be a multiple of 14")
    if args.child:
        sys.stdout.write(json.dumps(run_mode(args)) + "\n")
        return 0
    results = []
    for mode in args.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--device",
            args.device,
            "--model",
            args.model,
            "--resolution",
            str(args.resolution),
            "--batch-size",
            str(args.batch_size),
            "--queries",
            str(args.queries),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--precision",
            args.precision,
        ]
        if mode == "on":
            cmd.append("--checkpointing")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in results:
        mem = (
            f"peak GPU {r['peak_gpu_gib']} GiB ({r['gpu']})"
            if "peak_gpu_gib" in r
            else f"peak RSS {r['peak_cpu_rss_gib']} GiB"
        )
        sys.stdout.write(
            f"{r['device']} {r['resolution']}px batch {r['batch_size']} x {r['queries_per_image']} prompts, "
            f"{r['precision']}, gradient checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}: "
            f"{r['seconds_per_step']} s/step (steps {r['step_times']}), {mem}, "
            f"{r['trainable_params']:,} LoRA params\n"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
