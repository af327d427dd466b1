"""Tracked video out: an overlay mp4, per-frame COCO RLE masks in one JSON, a per-frame CSV.

All three are written frame by frame as results arrive (nothing accumulates in memory) into
temporary files beside their targets, and renamed into place by :meth:`TrackWriter.close`, which
also runs on Ctrl-C: an interrupted run keeps every frame already processed, and its JSON says
``"complete": false``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .detections_json import encode_rle
from .overlays import PALETTE

__all__ = ["TrackWriter", "object_color"]

_ALPHA = 0.45


def object_color(object_id: int) -> tuple[int, int, int]:
    """One fixed RGB colour per object id (the Tableau-10 palette, cycling)."""
    return PALETTE[int(object_id) % len(PALETTE)]


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


class TrackWriter:
    """Writes ``overlay.mp4`` (optional), ``tracks.json`` and ``tracks.csv`` into ``out_dir``."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        source: str,
        fps: float,
        size: tuple[int, int],
        prompts: Sequence[str],
        overlay: bool = True,
        extra: dict | None = None,
    ) -> None:
        import cv2

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.height, self.width = size
        self.paths = {"json": self.out_dir / "tracks.json", "csv": self.out_dir / "tracks.csv"}
        if overlay:
            self.paths["overlay"] = self.out_dir / "overlay.mp4"
        self.frames_written = 0
        self.objects: dict[int, dict] = {}
        self._closed = False
        self._json = open(_tmp(self.paths["json"]), "w")  # noqa: SIM115 - closed in close()
        header = {
            "video": source,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "prompts": list(prompts),
        }
        header.update(extra or {})
        self._json.write(json.dumps(header)[:-1] + ', "frames": [\n')
        self._csv_file = open(_tmp(self.paths["csv"]), "w", newline="")  # noqa: SIM115 - closed in close()
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "time_s", "object_id", "prompt", "area_px", "score"])
        self._video = None
        if overlay:
            self._video = cv2.VideoWriter(
                str(_tmp(self.paths["overlay"])), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (self.width, self.height)
            )
            if not self._video.isOpened():
                raise OSError(f"{self.paths['overlay']}: OpenCV cannot write mp4 (mp4v) here")

    def write(
        self,
        frame_index: int,
        rgb: np.ndarray | None,
        object_ids: Sequence[int],
        prompts: Sequence[str],
        scores: Sequence[float],
        masks: np.ndarray,
    ) -> None:
        """Record one frame: ``masks`` is (N, H, W) bool, one per object id (possibly N = 0)."""
        entries = []
        time_s = frame_index / self.fps
        for oid, prompt, score, mask in zip(object_ids, prompts, scores, masks):
            area = int(mask.sum())
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if area else None
            entries.append(
                {
                    "object_id": int(oid),
                    "prompt": prompt,
                    "score": round(float(score), 6),
                    "area": area,
                    "box_xyxy": box,
                    "segmentation": encode_rle(mask),
                }
            )
            self._csv.writerow([frame_index, f"{time_s:.4f}", int(oid), prompt, area, f"{float(score):.6f}"])
            track = self.objects.setdefault(int(oid), {"prompt": prompt, "first_frame": frame_index, "frames": 0})
            track["last_frame"] = frame_index
            track["frames"] += 1
        sep = ",\n" if self.frames_written else ""
        self._json.write(sep + json.dumps({"frame_index": int(frame_index), "objects": entries}))
        self._csv_file.flush()
        if self._video is not None and rgb is not None:
            self._video.write(self._overlay(rgb, object_ids, prompts, scores, masks))
        self.frames_written += 1

    def _overlay(self, rgb, object_ids, prompts, scores, masks) -> np.ndarray:
        import cv2

        out = rgb.astype(np.float32)
        for oid, mask in zip(object_ids, masks):
            out[mask] = out[mask] * (1 - _ALPHA) + np.array(object_color(oid), np.float32) * _ALPHA
        bgr = cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_RGB2BGR)
        scale = max(0.35, min(self.height, self.width) / 700)
        thick = max(1, round(scale * 2))
        for oid, mask in zip(object_ids, masks):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(bgr, contours, -1, object_color(oid)[::-1], thick)
        # Legend: one line per object on this frame, "#id prompt score", in the object's colour.
        line = int(22 * scale) + 4
        for row, (oid, prompt, score) in enumerate(zip(object_ids, prompts, scores)):
            y = line * (row + 1)
            text = f"#{int(oid)} {prompt} {float(score):.2f}"
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            cv2.rectangle(bgr, (2, y - th - 3), (6 + tw, y + 3), (24, 24, 24), -1)
            cv2.putText(bgr, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, object_color(oid)[::-1], thick, cv2.LINE_AA)
        return bgr

    def close(self, complete: bool = True) -> dict[str, Path]:
        """Finish the files and move them into place (also after an interruption: ``complete=False``)."""
        if self._closed:
            return self.paths
        self._closed = True
        tracks = {str(k): v for k, v in sorted(self.objects.items())}
        self._json.write(
            f'\n], "n_frames": {self.frames_written}, "complete": {json.dumps(complete)}, '
            f'"objects": {json.dumps(tracks)}}}\n'
        )
        self._json.close()
        self._csv_file.close()
        if self._video is not None:
            self._video.release()
        for path in self.paths.values():
            os.replace(_tmp(path), path)
        return self.paths

    def __enter__(self) -> TrackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
