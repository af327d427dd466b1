"""Video tracking benchmarks: speed against per-frame detection, and memory against video length.

Speed (``--speed``): SAM3's full architecture with random weights (timing depends on the
architecture, not the weights), ``--frames`` synthetic frames (a moving, resizing disc) at
``--resolution``: frames/s of the video model's tracking (``VideoPredictor``) vs detecting every
frame independently with the image ``Predictor`` (vision pass + the same prompts), same detector
weights.

Memory (``--memory``): the tiny random video model tracks a synthetic mp4 of ``--short`` and of
``--long`` frames through the whole ``infer_sam.py --video`` path (reader, tracker, overlay/JSON/CSV
writers), each in a fresh process; prints both peak RSS values and their ratio.

    python scripts/bench_video.py --speed --frames 32 --resolution 336
    python scripts/bench_video.py --memory --short 200 --long 2000
    python scripts/bench_video.py --speed --device cuda --precision bf16 --resolution 1008   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def disc_frames(n: int, height: int = 96, width: int = 128):
    """A bright disc moving right and breathing in size on a dark background."""
    yy, xx = np.mgrid[:height, :width]
    for i in range(n):
        cx = width * (0.25 + 0.5 * ((i % 60) / 60))
        cy = height / 2
        r = min(height, width) * (0.12 + 0.04 * np.sin(i / 5))
        frame = np.full((height, width, 3), 30, np.uint8)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 220
        yield frame


def write_video(path: Path, n: int, fps: float = 25.0, height: int = 96, width: int = 128) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in disc_frames(n, height, width):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def speed(args) -> None:
    import torch
    from transformers.models.sam3 import Sam3Processor

    from medsam3.inference.predictor import Predictor
    from medsam3.inference.video import VideoPredictor
    from medsam3.testing import random_sam3_video

    torch.set_grad_enabled(False)
    model, processor = random_sam3_video(args.model, args.resolution)
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the construction temporaries back: 2 models would not fit
    print(f"model built, RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB peak", flush=True)
    frames = list(disc_frames(args.frames, args.height, args.width))
    prompts = args.prompts
    vp = VideoPredictor(model, processor, device=args.device, threshold=args.threshold, precision=args.precision)
    # Random weights score every query alike: let a few objects in and cap them, so the tracker works
    # as it would on a clip with ``--max-objects`` structures of interest.
    vp.set_thresholds(args.threshold, new_object_threshold=args.threshold)
    model.max_num_objects = args.max_objects
    t0 = time.perf_counter()
    n_objects = set()
    for tracks in vp.track(frames, prompts):
        n_objects.update(tracks.object_ids.tolist())
    tracked = time.perf_counter() - t0
    print(f"tracking done: {tracked:.1f} s", flush=True)
    image_processor = Sam3Processor(processor.image_processor, processor.tokenizer)
    predictor = Predictor(model.detector_model, image_processor, device=args.device, precision=args.precision)
    t0 = time.perf_counter()
    for frame in frames:
        predictor.set_image(frame)
        predictor.predict(prompts, threshold=args.threshold)
    per_frame = time.perf_counter() - t0
    fps_t, fps_d = args.frames / tracked, args.frames / per_frame
    print(
        f"model={args.model} resolution={args.resolution} frames={args.frames} prompts={len(prompts)} "
        f"device={vp.device} precision={args.precision} objects tracked={len(n_objects)} (cap {args.max_objects})"
    )
    print(f"tracking (Sam3VideoModel, streamed):       {tracked:8.1f} s  {fps_t:.3f} frames/s")
    print(f"per-frame detection (image Predictor):     {per_frame:8.1f} s  {fps_d:.3f} frames/s")
    print(f"ratio tracking / per-frame detection:      {fps_t / fps_d:.2f}x")


def memory_child(video: str, out_dir: str, model_dir: str) -> None:
    """One tracking run in this process; prints peak RSS (MiB) as JSON."""
    from medsam3.cli.infer import main

    code = main(
        [
            "--video",
            video,
            "--prompt",
            "liver",
            "--weights",
            "none",
            "--set",
            f"model.name={model_dir}",
            "--threshold",
            "0.0",
            "--output-dir",
            out_dir,
            "-q",
        ]
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"code": code, "peak_rss_mib": peak}))


def memory(args) -> None:
    from medsam3.testing import build_tiny_video_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_video_checkpoint(tmp / "tiny_video")
        results = {}
        for n in (args.short, args.long):
            video = write_video(tmp / f"disc_{n}.mp4", n)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(video), str(tmp / f"out_{n}"), str(model_dir)],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if proc.returncode != 0:
                sys.exit(f"run with {n} frames failed:\n{proc.stderr[-3000:]}")
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            frames = json.loads((tmp / f"out_{n}" / "tracks.json").read_text())["n_frames"]
            results[n] = stats["peak_rss_mib"]
            print(
                f"{n:6d} frames ({frames} tracked): peak RSS {stats['peak_rss_mib']:8.1f} MiB, "
                f"{time.perf_counter() - t0:7.1f} s"
            )
        print(f"ratio peak RSS {args.long} / {args.short} frames: {results[args.long] / results[args.short]:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--memory-child", nargs=3, metavar=("VIDEO", "OUT", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--model", default="full", choices=["full", "tiny"])
    p.add_argument("--resolution", type=int, default=336)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--prompts", nargs="+", default=["lesion"])
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--max-objects", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    p.add_argument("--short", type=int, default=200)
    p.add_argument("--long", type=int, default=2000)
    args = p.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
    elif args.memory:
        memory(args)
    elif args.speed:
        speed(args)
    else:
        p.error("give --speed or --memory")


if __name__ == "__main__":
    main()
