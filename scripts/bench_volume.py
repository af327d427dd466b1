#!/usr/bin/env python3
"""Volume inference throughput: slices per second with batched vision passes vs one slice at a time.

Three ways over the same synthetic volume and weights:

* batched:   ``segment_volume(..., slice_batch=B)``: B slices per vision pass, all prompts per slice
             in one pass over the cached features (what ``infer_sam.py --image vol.nii.gz`` does);
* 1 slice:   the same with ``slice_batch=1``;
* upstream:  one full ``Sam3Model`` forward per slice per prompt (vision encoder re-run for every
             prompt), timed on ``--upstream-slices`` slices and reported per slice.

The three run interleaved, chunk by chunk, so a machine shared with other jobs slows them alike.

  python scripts/bench_volume.py                                   # full-size random SAM3, 336 px, CPU
  python scripts/bench_volume.py --model tiny --slices 16          # seconds, a smoke test
  python scripts/bench_volume.py --model /models/sam3 --resolution 1008 --device cuda --batch-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch
from transformers import Sam3Model, Sam3Processor

from medsam3.config import ModelConfig
from medsam3.inference.predictor import PAD_BOX, PAD_LABEL, Predictor, select_vision
from medsam3.inference.volume import segment_volume
from medsam3.io import Volume, choose_intensity
from medsam3.model import load_base_model, resolve_device
from medsam3.testing import random_sam3

PROMPTS = ["liver", "spleen", "kidney", "aorta", "pancreas", "stomach", "gallbladder", "bladder"]


def build(model: str, resolution: int | None) -> tuple[Sam3Model, Sam3Processor]:
    if model in ("tiny", "full"):
        return random_sam3(model, resolution)
    return load_base_model(ModelConfig(name=model, resolution=resolution))


def synthetic_ct(n_slices: int, size: int) -> Volume:
    """A CT-like volume in HU: air, a body ellipse, an 'organ' ellipsoid; 0.8 x 0.8 x 2.5 mm."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, n_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    rng = np.random.default_rng(0)
    data = np.full(z.shape, -1000.0, np.float32)
    data[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40
    data[((x - 0.3) / 0.35) ** 2 + (y / 0.3) ** 2 + (z / 0.8) ** 2 < 1] = 110
    data += rng.normal(0, 15, data.shape).astype(np.float32)
    data = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))  # (x, y, z) voxel order, slices last
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return Volume(
        data=data,
        affine=affine,
        spacing=(0.8, 0.8, 2.5),
        modality="CT",
        intensity=choose_intensity(data, modality="CT"),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="full", help="full (random weights, default), tiny, or a checkpoint dir")
    ap.add_argument("--resolution", type=int, default=336, help="model input size (default 336)")
    ap.add_argument("--slices", type=int, default=64, help="slices in the volume (default 64)")
    ap.add_argument("--slice-size", type=int, default=256, help="in-plane voxels (default 256)")
    ap.add_argument("--batch-size", type=int, default=8, help="slices per vision pass, batched run (default 8)")
    ap.add_argument("--prompts", type=int, default=2, help="text prompts per slice (default 2)")
    ap.add_argument(
        "--upstream-slices",
        type=int,
        default=4,
        help="slices timed the upstream way (full forward per slice per prompt); 0 skips (default 4)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--json", help="also write the figures to this JSON file (scripts/device_check.sh)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = resolve_device(args.device)
    model, processor = build(args.model, args.resolution)
    predictor = Predictor(model, processor, device=device, precision=args.precision, prompt_batch_size=64)
    prompts = PROMPTS[: args.prompts]
    volume = synthetic_ct(args.slices, args.slice_size)
    res = processor.image_processor.size["height"]
    n_params = sum(p.numel() for p in predictor.model.parameters())
    print(
        f"model={args.model} params={n_params / 1e6:.1f}M resolution={res} device={device} "
        f"precision={'bf16' if predictor.autocast_dtype else 'fp32'} threads={torch.get_num_threads()} "
        f"volume={volume.shape} slices={args.slices} prompts={len(prompts)} batch={args.batch_size}",
        flush=True,
    )

    # Warm-up, untimed: allocator, kernels, text-embedding cache (both timed runs then share it).
    predictor.predict_images([volume.slice_rgb(0)], prompts, threshold=0.0)

    autocast = (
        torch.autocast(device.type, dtype=predictor.autocast_dtype)
        if predictor.autocast_dtype
        else contextlib.nullcontext()
    )

    def upstream(k: int) -> None:
        image = volume.slice_rgb(k)
        for prompt in prompts:
            inputs = processor(images=image, text=[prompt], return_tensors="pt").to(device)
            with autocast:  # vision pass + the rest, as Sam3Model.forward(pixel_values=...) does; see select_vision
                vision = predictor.model.get_vision_features(pixel_values=inputs["pixel_values"])
                predictor.model(
                    vision_embeds=select_vision(vision, [0]),
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    input_boxes=torch.tensor([[PAD_BOX]], device=device),
                    input_boxes_labels=torch.tensor([[PAD_LABEL]], device=device),
                )

    def clock(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    # The three ways run interleaved, chunk by chunk (batch-size slices each), so that a machine shared
    # with other jobs slows them alike; the upstream way runs on `--upstream-slices` slices in all.
    n_chunks = -(-args.slices // args.batch_size)
    up_per_chunk = -(-args.upstream_slices // n_chunks) if args.upstream_slices > 0 else 0
    t_b = t_1 = t_up = 0.0
    n_up = 0
    labels_b, labels_1 = [], []
    for c, start in enumerate(range(0, args.slices, args.batch_size)):
        stop = min(start + args.batch_size, args.slices)
        chunk = Volume(
            data=volume.data[..., start:stop],
            affine=volume.affine,
            spacing=volume.spacing,
            modality=volume.modality,
            intensity=volume.intensity,
        )
        seg = {}
        t_b += clock(
            lambda c=chunk, s=seg: s.update(b=segment_volume(predictor, c, prompts, slice_batch=args.batch_size))
        )
        t_1 += clock(lambda c=chunk, s=seg: s.update(one=segment_volume(predictor, c, prompts, slice_batch=1)))
        labels_b.append(seg["b"].labels)
        labels_1.append(seg["one"].labels)
        for k in range(start, stop)[: max(0, min(up_per_chunk, args.upstream_slices - n_up))]:
            t_up += clock(lambda k=k: upstream(k))
            n_up += 1
        print(
            f"  chunk {c + 1}/{n_chunks}: batched {t_b:.1f} s, 1 slice/pass {t_1:.1f} s, "
            f"upstream {t_up:.1f} s on {n_up} slice(s)",
            flush=True,
        )
    agree = float((np.concatenate(labels_b, -1) == np.concatenate(labels_1, -1)).mean())
    print(f"batched ({args.batch_size} slices/pass): {t_b:8.1f} s  {args.slices / t_b:7.3f} slices/s", flush=True)
    print(f"one slice per pass:        {t_1:8.1f} s  {args.slices / t_1:7.3f} slices/s", flush=True)
    print(f"speed-up batched vs 1 slice: {t_1 / t_b:.2f}x   label agreement: {100 * agree:.4f}% of voxels", flush=True)
    if n_up:
        per_slice = t_up / n_up
        print(
            f"upstream (full forward per slice per prompt, {n_up} slices timed): {per_slice:.2f} s/slice  "
            f"{1 / per_slice:7.3f} slices/s  (~{per_slice * args.slices:.0f} s for {args.slices} slices, "
            f"no post-processing)",
            flush=True,
        )
        print(
            f"speed-up batched vs upstream: {per_slice * args.slices / t_b:.2f}x   "
            f"1 slice/pass vs upstream: {per_slice * args.slices / t_1:.2f}x",
            flush=True,
        )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if args.json:
        figures = {
            "model": args.model,
            "resolution": res,
            "device": str(device),
            "precision": "bf16" if predictor.autocast_dtype else "fp32",
            "slices": args.slices,
            "prompts": len(prompts),
            "batch_size": args.batch_size,
            "batched_slices_per_s": round(args.slices / t_b, 4),
            "one_slice_slices_per_s": round(args.slices / t_1, 4),
            "upstream_slices_per_s": round(n_up / t_up, 4) if n_up else None,
            "label_agreement": agree,
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        }
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
