#!/usr/bin/env python3
"""One image x N prompts: the Predictor (vision once, prompts batched) vs N full Sam3Model forwards.

Both sides use the same weights, include the geometry CLS and post-process their outputs to the
image's size with the same function (score, threshold, NMS, masks upsampled to 480x640), as
upstream's ``infer_sam.py`` post-processes each forward. The Predictor's time is split into the
vision pass, the first prompt and prompts 2..N (answered in one batched pass over the cached
features). The two sides run interleaved, so a machine shared with other jobs slows them alike;
the figures are from one run, reported as a ratio. ``--threshold 0`` makes every query a
candidate whatever the (random) weights score; NMS then keeps what a user would get.

  python scripts/bench_inference.py --model full --resolution 504      # random full-size SAM3
  python scripts/bench_inference.py --model full --resolution 336 504  # both, one line each
  python scripts/bench_inference.py --model tiny                       # seconds, for a smoke test
  python scripts/bench_inference.py --model /path/to/sam3 --device cuda --precision bf16 --json out.json
  python scripts/bench_inference.py --model full --resolution 504 --free-pixel-decoder   # an upper bound
  python scripts/bench_inference.py --model full --resolution 504 1008 --backend torch ort-fp32 ort-int8

``--backend`` compares PyTorch fp32, ONNX Runtime fp32 and int8 under the same Predictor instead,
each in its own process, interleaved (``scripts/bench_backends.py``; docs/onnx.md).

``--free-pixel-decoder`` is an upper bound, not a result: on the Predictor's side SAM3's pixel decoder
returns a cached output instead of running, so its cost is zero (scores are unchanged, they come
before the mask decoder; masks are not valid). It shows how far the ratio could go if the pixel
decoder, half of the prompt path on a CPU, were free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Sam3Model, Sam3Processor

from medsam3.config import ModelConfig
from medsam3.inference.postprocess import detection_scores, postprocess_query_outputs
from medsam3.inference.predictor import PAD_BOX, PAD_LABEL, Predictor, select_vision
from medsam3.model import load_base_model, resolve_device, unwrap
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
IMAGE_HW = (480, 640)


def build(model: str, resolution: int | None) -> tuple[Sam3Model, Sam3Processor]:
    if model in ("tiny", "full"):
        return random_sam3(model, resolution)
    return load_base_model(ModelConfig(name=model, resolution=resolution))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CPU_SECONDS: dict[str, float] = {}  # process CPU time per timed call (all threads), by label


def timed(device: torch.device, fn, label: str = ""):
    """Wall-clock seconds of ``fn``; its process CPU seconds go to ``CPU_SECONDS[label]``.

    On a machine shared with other jobs, wall time includes waiting for a core; CPU time does not,
    so the CPU-time ratio is the steadier figure there (on CUDA only wall time means anything).
    """
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    sync(device)
    CPU_SECONDS[label] = CPU_SECONDS.get(label, 0.0) + time.process_time() - c0
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def pixel_decoder_cached(model: torch.nn.Module, cache: dict):
    """For ``--free-pixel-decoder``: the pixel decoder answers from ``cache`` (keyed by batch shape)."""
    decoder = unwrap(model).mask_decoder.pixel_decoder
    run = decoder.forward

    def cached(backbone_features):
        key = tuple(backbone_features[-1].shape)
        if key not in cache:
            cache[key] = run(backbone_features)
        return cache[key]

    decoder.forward = cached
    try:
        yield
    finally:
        del decoder.forward


PROMPT_MODULES = {  # SAM3's prompt-conditioned parts, timed over prompts 2..N on a CPU
    "detr_encoder": "detr_encoder",
    "detr_decoder": "detr_decoder",
    "pixel_decoder": "mask_decoder.pixel_decoder",
    "mask_decoder": "mask_decoder",
}


@contextlib.contextmanager
def module_seconds(model: torch.nn.Module, into: dict[str, float]):
    """Wall seconds spent in each of :data:`PROMPT_MODULES` (forward hooks), summed into ``into``."""
    modules = dict(unwrap(model).named_modules())
    handles = []
    for label, name in PROMPT_MODULES.items():
        started: list[float] = []

        def pre(_m, _a, started=started):
            started.append(time.perf_counter())

        def post(_m, _a, _o, label=label, started=started):
            into[label] = into.get(label, 0.0) + time.perf_counter() - started.pop()

        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    try:
        yield into
    finally:
        for h in handles:
            h.remove()


def bench(args, resolution: int | None) -> dict:
    device = resolve_device(args.device)
    model, processor = build(args.model, resolution)
    predictor = Predictor(
        model, processor, device=device, precision=args.precision, prompt_batch_size=args.prompt_batch_size
    )
    if args.compile:
        predictor.compile_vision_encoder()
    prompts = PROMPTS[: args.prompts]
    image = (np.random.RandomState(0).rand(*IMAGE_HW, 3) * 255).astype(np.uint8)
    res = processor.image_processor.size["height"]
    autocast = (
        torch.autocast(device.type, dtype=predictor.autocast_dtype)
        if predictor.autocast_dtype
        else contextlib.nullcontext()
    )
    nms_iou = None if args.nms_iou >= 1 else args.nms_iou

    @torch.inference_mode()
    def full_forward(prompt: str):
        """Upstream's way: the whole model for one prompt, then its output post-processed.

        The vision pass is called explicitly and its features handed on through ``select_vision``,
        which is exactly what ``Sam3Model.forward(pixel_values=...)`` does, except that bf16 features
        go on as fp32 on CPU: transformers' geometry encoder casts them to fp16 for ``roi_align``,
        which CPU autocast rejects.
        """
        inputs = processor(images=image, text=[prompt], return_tensors="pt").to(device)
        with autocast:
            vision = predictor.model.get_vision_features(pixel_values=inputs["pixel_values"])
            out = predictor.model(
                vision_embeds=select_vision(vision, [0]),
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                input_boxes=torch.tensor([[PAD_BOX]], device=device),
                input_boxes_labels=torch.tensor([[PAD_LABEL]], device=device),
            )
        scores = detection_scores(out.pred_logits, out.presence_logits)[0]
        return postprocess_query_outputs(
            prompt, scores, out.pred_boxes[0], out.pred_masks[0], IMAGE_HW, args.threshold, nms_iou
        )

    pixel_cache: dict = {}

    def predict(ps):
        free = args.free_pixel_decoder
        with pixel_decoder_cached(predictor.model, pixel_cache) if free else contextlib.nullcontext():
            return predictor.predict(ps, threshold=args.threshold, nms_iou=nms_iou)

    # Warm-up (allocator, kernels, compilation) on both paths, untimed.
    full_forward(prompts[0])
    predictor.set_image(image)
    predict(prompts[:1])
    predictor.clear_cache()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    CPU_SECONDS.clear()

    # Interleaved: naive forward, a Predictor stage, naive forward, ...
    naive_times, naive = [], []
    by_module: dict[str, float] = {}

    def other_prompts():
        if len(prompts) < 2:
            return []
        if device.type != "cpu":  # kernels run asynchronously: hook times would mean nothing
            return predict(prompts[1:])
        with module_seconds(predictor.model, by_module):
            return predict(prompts[1:])

    stages = [
        ("vision", lambda: predictor.set_image(image)),
        ("first_prompt", lambda: predict(prompts[:1])),
        ("other_prompts", other_prompts),
    ]
    stage_times: dict[str, float] = {}
    results = []
    peak_one = None
    for i, prompt in enumerate(prompts):
        det, t = timed(device, lambda p=prompt: full_forward(p), "naive")
        naive.append(det)
        naive_times.append(t)
        if i < len(stages):
            name, fn = stages[i]
            out, stage_times[name] = timed(device, fn, name)
            if name != "vision":
                results += out
            if name == "first_prompt" and device.type == "cuda":
                peak_one = torch.cuda.max_memory_allocated(device) / 2**30
    for name, fn in stages[len(prompts) :]:  # fewer prompts than stages
        out, stage_times[name] = timed(device, fn, name)
        results += out if name != "vision" else []

    t_naive = sum(naive_times)
    t_pred = sum(stage_times.values())
    diff = max(
        (float(np.abs(a.scores - b.scores).max()) for a, b in zip(naive, results) if len(a) and len(a) == len(b)),
        default=0.0,
    )
    same_counts = all(len(a) == len(b) for a, b in zip(naive, results))
    row = {
        "model": args.model,
        "params_m": round(sum(p.numel() for p in predictor.model.parameters()) / 1e6, 1),
        "resolution": res,
        "device": str(device),
        "precision": "bf16" if predictor.autocast_dtype else "fp32",
        "compile": bool(args.compile),
        "free_pixel_decoder": bool(args.free_pixel_decoder),
        "threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "image": f"{IMAGE_HW[0]}x{IMAGE_HW[1]}",
        "threshold": args.threshold,
        "nms_iou": nms_iou,
        "kept_per_prompt": [len(d) for d in results],
        "naive_s": round(t_naive, 3),
        "predictor_s": round(t_pred, 3),
        "speedup": round(t_naive / t_pred, 2),
        "naive_cpu_s": round(CPU_SECONDS["naive"], 3),
        "predictor_cpu_s": round(sum(v for k, v in CPU_SECONDS.items() if k != "naive"), 3),
        "speedup_cpu_time": round(
            CPU_SECONDS["naive"] / max(1e-9, sum(v for k, v in CPU_SECONDS.items() if k != "naive")), 2
        ),
        "other_prompts_cpu_s": round(CPU_SECONDS.get("other_prompts", 0.0), 3),
        "vision_s": round(stage_times["vision"], 3),
        "first_prompt_s": round(stage_times["first_prompt"], 3),
        "other_prompts_s": round(stage_times.get("other_prompts", 0.0), 3),
        "ms_per_image_1_prompt": round(1000 * (stage_times["vision"] + stage_times["first_prompt"]), 1),
        "ms_per_image_all_prompts": round(1000 * t_pred, 1),
        "other_prompts_by_module_s": {k: round(v, 3) for k, v in by_module.items()},
        "max_abs_score_diff": diff,
        "same_detection_counts": same_counts,
        "peak_cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device.type == "cuda":
        row["peak_gpu_gib_1_prompt"] = round(peak_one, 2) if peak_one is not None else None
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, full (random weights) or a local checkpoint dir")
    ap.add_argument("--resolution", type=int, nargs="+", default=[None], help="input size(s) (default: the model's)")
    ap.add_argument("--prompts", type=int, default=8, help="number of prompts (default 8)")
    ap.add_argument(
        "--prompt-batch-size", type=int, default=None, help="prompts per batched pass (default: the Predictor's)"
    )
    ap.add_argument("--threshold", type=float, default=0.0, help="score threshold on both sides (default 0)")
    ap.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU on both sides; 1 disables (default 0.5)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the vision encoder (hardware.use_compile)")
    ap.add_argument(
        "--free-pixel-decoder",
        action="store_true",
        help="upper bound: the Predictor's pixel decoder costs nothing (cached output; masks invalid)",
    )
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument(
        "--backend",
        nargs="+",
        metavar="BACKEND",
        help="torch ort-fp32 ort-int8 [ort-int8=DIR]: compare PyTorch fp32 with ONNX Runtime fp32 / int8 instead "
        "(scripts/bench_backends.py)",
    )
    args, _ = ap.parse_known_args()
    if args.backend:  # the backend comparison lives in its own script, which takes the same flags
        import runpy

        sys.argv[0] = str(Path(__file__).with_name("bench_backends.py"))
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    args = ap.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be in 1..{len(PROMPTS)}")
    rows = []
    for resolution in args.resolution:
        row = bench(args, resolution)
        rows.append(row)
        print(
            f"{row['model']} ({row['params_m']}M) {row['resolution']} px {row['device']} {row['precision']}"
            f"{' compiled' if row['compile'] else ''}"
            f"{' UPPER BOUND: pixel decoder free, masks invalid' if row['free_pixel_decoder'] else ''}"
            f", {row['threads']} threads, 1 image {row['image']} x "
            f"{row['prompts']} prompts, threshold {row['threshold']:g}, NMS {row['nms_iou']}, post-processing "
            f"to full size on both sides (kept per prompt: {row['kept_per_prompt']})\n"
            f"  {row['prompts']} full forwards:  {row['naive_s']:8.2f} s\n"
            f"  Predictor:          {row['predictor_s']:8.2f} s = vision {row['vision_s']:.2f} + first prompt "
            f"{row['first_prompt_s']:.2f} + prompts 2..{row['prompts']} {row['other_prompts_s']:.2f} "
            f"({1000 * row['other_prompts_s'] / max(1, row['prompts'] - 1):.0f} ms each)\n"
            f"  CPU time (all threads): {row['naive_cpu_s']:.2f} s vs {row['predictor_cpu_s']:.2f} s "
            f"(prompts 2..{row['prompts']}: {row['other_prompts_cpu_s']:.2f} s)\n"
            f"  speed-up {row['speedup']:.2f}x wall, {row['speedup_cpu_time']:.2f}x CPU time   "
            f"max |score difference| {row['max_abs_score_diff']:.2e}   "
            f"same detection counts: {row['same_detection_counts']}",
            flush=True,
        )
        mods = row["other_prompts_by_module_s"]
        if mods:
            rest = mods["mask_decoder"] - mods["pixel_decoder"]
            other = row["other_prompts_s"] - mods["detr_encoder"] - mods["detr_decoder"] - mods["mask_decoder"]
            print(
                f"  prompts 2..{row['prompts']} by module: DETR encoder {mods['detr_encoder']:.2f} s, DETR decoder "
                f"{mods['detr_decoder']:.2f} s, pixel decoder {mods['pixel_decoder']:.2f} s, rest of the mask "
                f"decoder {rest:.2f} s, everything else {other:.2f} s"
            )
        if "peak_gpu_gib" in row:
            print(f"  peak GPU memory: {row['peak_gpu_gib_1_prompt']} GiB (1 prompt), {row['peak_gpu_gib']} GiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows if len(rows) > 1 else rows[0], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
