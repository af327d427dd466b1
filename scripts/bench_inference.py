#!/usr/bin/env python3
"""One image x N prompts: the Predictor (vision once, prompts batched) vs N full Sam3Model forwards.

Both paths use the same weights and include the geometry CLS; the script also checks that they
agree. Timings are wall clock on this machine, measured in one run, reported as a ratio.

  python scripts/bench_inference.py --model full --resolution 504      # random full-size SAM3
  python scripts/bench_inference.py --model tiny                       # seconds, for a smoke test
  python scripts/bench_inference.py --model /path/to/sam3 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from transformers import Sam3Model, Sam3Processor

from medsam3.config import ModelConfig
from medsam3.inference.predictor import PAD_BOX, PAD_LABEL, Predictor
from medsam3.model import load_base_model, resolve_device
from medsam3.testing import random_sam3

PROMPTS = [
    "liver",
    "liver tumor",
    "kidney",
    "spleen",
    "pancreas",
    "gallbladder",
    "stomach",
    "aorta",
    "left lung",
    "right lung",
    "heart",
    "bladder",
    "prostate",
    "brain tumor",
    "skin lesion",
    "polyp",
]


def build(model: str, resolution: int | None) -> tuple[Sam3Model, Sam3Processor]:
    if model in ("tiny", "full"):
        return random_sam3(model, resolution)
    return load_base_model(ModelConfig(name=model, resolution=resolution))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, full (random weights) or a local checkpoint dir")
    ap.add_argument("--resolution", type=int, help="input size (default: the model's)")
    ap.add_argument("--prompts", type=int, default=8, help="number of prompts (default 8)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=1, help="timed repetitions of the Predictor path")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    device = resolve_device(args.device)
    model, processor = build(args.model, args.resolution)
    predictor = Predictor(model, processor, device=device, precision=args.precision, prompt_batch_size=args.prompts)
    prompts = PROMPTS[: args.prompts]
    image = (np.random.RandomState(0).rand(600, 800, 3) * 255).astype(np.uint8)
    res = processor.image_processor.size["height"]
    n_params = sum(p.numel() for p in predictor.model.parameters())
    print(
        f"model={args.model} params={n_params / 1e6:.1f}M resolution={res} device={device} "
        f"precision={'bf16' if predictor.autocast_dtype else 'fp32'} prompts={len(prompts)} "
        f"threads={torch.get_num_threads()}"
    )

    # Warm-up (allocator, kernels) on both paths, untimed.
    predictor.set_image(image)
    predictor.predict(prompts[:1], threshold=0.0, nms_iou=None)
    autocast = (
        torch.autocast(device.type, dtype=predictor.autocast_dtype)
        if predictor.autocast_dtype
        else contextlib.nullcontext()
    )

    def full_forward(prompt: str):
        inputs = processor(images=image, text=[prompt], return_tensors="pt").to(device)
        with autocast:
            return predictor.model(
                pixel_values=inputs["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                input_boxes=torch.tensor([[PAD_BOX]], device=device),
                input_boxes_labels=torch.tensor([[PAD_LABEL]], device=device),
            )

    sync(device)
    t0 = time.perf_counter()
    naive = [full_forward(p) for p in prompts]
    sync(device)
    t_naive = time.perf_counter() - t0

    times = []
    for _ in range(args.repeats):
        predictor.clear_cache()
        sync(device)
        t0 = time.perf_counter()
        predictor.set_image(image)
        results = predictor.predict(prompts, threshold=0.0, nms_iou=None)
        sync(device)
        times.append(time.perf_counter() - t0)
    t_pred = min(times)

    diff = 0.0
    for out, det in zip(naive, results):
        scores = (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid())[0].cpu().numpy()
        diff = max(diff, float(np.abs(np.sort(scores)[::-1] - det.scores).max()))
    print(f"{len(prompts)} full forwards:   {t_naive:8.2f} s  ({1000 * t_naive / len(prompts):.0f} ms/prompt)")
    print(f"Predictor (1 vision pass): {t_pred:8.2f} s  ({1000 * t_pred:.0f} ms/image incl. postprocess)")
    print(f"speed-up: {t_naive / t_pred:.2f}x   max |score difference|: {diff:.2e}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
