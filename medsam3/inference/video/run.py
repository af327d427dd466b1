"""A video or a volume in, tracked-mask files out: what ``infer_sam.py --video`` / ``--propagate`` run.

Video: ``overlay.mp4`` (source fps, one colour per object id, legend), ``tracks.json`` (per
frame: object id, prompt, score, box, COCO RLE mask), ``tracks.csv`` (frame, time, object id,
prompt, area, score). Volume: the same JSON/CSV per slice, plus ``labels.nii.gz`` aligned with the
input (one value per prompt, 1 = first) and ``legend.json``.

Frames stream through: a progress bar shows frames/s and the ETA; Ctrl-C stops after the current
frame with every finished frame written (``"complete": false`` in the JSON) and re-raises, so the
CLI exits 130.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...io import Volume, label_map_image
from ...io.video import VideoSource
from ...outputs import atomic_path, write_json
from ...outputs.video import TrackWriter
from .predictor import VideoPredictor
from .propagate import propagate_slices

__all__ = ["run_video", "run_volume"]

logger = logging.getLogger(__name__)


def _summary(writer: TrackWriter, prompts: Sequence[str], seconds: float) -> dict:
    per_prompt = {p: sorted(k for k, v in writer.objects.items() if v["prompt"] == p) for p in prompts}
    for prompt, ids in per_prompt.items():
        if not ids:
            logger.warning("no object found for %r on any of the %d frames", prompt, writer.frames_written)
    return {
        "frames": writer.frames_written,
        "objects": len(writer.objects),
        "objects_per_prompt": per_prompt,
        "seconds": round(seconds, 3),
        "frames_per_second": round(writer.frames_written / seconds, 4) if seconds > 0 else None,
    }


def run_video(
    vp: VideoPredictor,
    source: VideoSource,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    boxes=None,
    box_labels=None,
    box_frame: int = 0,
    overlay: bool = True,
    progress: bool = True,
) -> dict:
    """Track ``prompts`` through ``source`` and write the outputs; returns a summary (also in ``summary.json``)."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    extra = {"kind": source.kind, "adapter": getattr(vp, "adapter_origin", None)}
    with TrackWriter(
        out_dir,
        source=str(source.path),
        fps=source.fps,
        size=(source.height, source.width),
        prompts=prompts,
        overlay=overlay,
        extra=extra,
    ) as writer:
        frames = source.frames()
        bar = tqdm(total=source.n_frames, unit="frame", desc=source.path.name, dynamic_ncols=True, disable=not progress)
        rgb_by_index: dict[int, np.ndarray] = {}

        def remembered():
            for i, rgb in enumerate(frames):
                rgb_by_index[i] = rgb  # the overlay needs the frame the tracks belong to: one at a time
                yield rgb

        try:
            for tracks in vp.track(remembered(), prompts, boxes=boxes, box_labels=box_labels, box_frame=box_frame):
                rgb = rgb_by_index.pop(tracks.frame_index)
                writer.write(tracks.frame_index, rgb, tracks.object_ids, tracks.prompts, tracks.scores, tracks.masks)
                bar.update(1)
        finally:
            bar.close()
    summary = _summary(writer, prompts, time.perf_counter() - start)
    write_json(summary, out_dir / "summary.json")
    logger.info(
        "%d frames, %d objects -> %s (%.2f frames/s)",
        summary["frames"],
        summary["objects"],
        out_dir,
        summary["frames_per_second"] or 0,
    )
    return summary


def run_volume(
    vp: VideoPredictor,
    volume: Volume,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    axis: int = 2,
    scan_stride: int | None = None,
    progress: bool = True,
) -> dict:
    """Propagate ``prompts`` through the slices of ``volume``; write the label map, legend and per-slice tracks."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    slices = list(volume.slices_rgb(axis))
    h, w = slices[0].shape[:2]
    label_slices = np.zeros((len(slices), h, w), np.uint16)
    best = np.zeros((len(slices), h, w), np.float32)  # the score owning each pixel: higher detection wins
    with TrackWriter(
        out_dir, source=str(volume.path), fps=1.0, size=(h, w), prompts=prompts, overlay=False, extra={"axis": axis}
    ) as writer:
        bar = tqdm(total=len(slices), unit="slice", desc="propagate", dynamic_ncols=True, disable=not progress)
        try:
            for tracks in propagate_slices(vp, slices, prompts, scan_stride=scan_stride):
                k = tracks.frame_index
                for prompt, score, mask in zip(tracks.prompts, tracks.scores, tracks.masks):
                    win = mask & (score > best[k])
                    label_slices[k][win] = prompts.index(prompt) + 1
                    best[k][win] = score
                writer.write(k, None, tracks.object_ids, tracks.prompts, tracks.scores, tracks.masks)
                bar.update(1)
        finally:
            bar.close()
    labels = volume.labels_from_slices(label_slices, axis=axis)
    with atomic_path(out_dir / "labels.nii.gz") as tmp:
        label_map_image(labels, volume).to_filename(tmp)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(prompts) + 1)
    legend = [{"value": i + 1, "prompt": p, "voxels": int(counts[i + 1])} for i, p in enumerate(prompts)]
    write_json({"source": str(volume.path), "axis": axis, "labels": legend}, out_dir / "legend.json")
    summary = _summary(writer, prompts, time.perf_counter() - start)
    write_json(summary, out_dir / "summary.json")
    return summary
