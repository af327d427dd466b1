"""Video in: files (mp4/avi/mov/mkv/...), animated GIF, a folder of frames, multi-frame DICOM cine.

Frames are *streamed* (one decoded frame in memory at a time), so a 10-minute ultrasound loop
costs the memory of one frame here. Every source yields RGB ``uint8`` (H, W, 3) frames and
states its frame rate, so outputs can be written at the source's speed.

Why OpenCV: ``opencv-python-headless`` is already a dependency (image post-processing), its
wheels bundle FFmpeg (H.264/HEVC/MPEG-4/MJPEG and GIF decoding, mp4 writing) and need no system
packages; PyAV would add a second FFmpeg binding for the same decoders. DICOM cine is read with
pydicom's frame iterator (``pydicom.pixels.iter_pixels``), also frame by frame, with the frame
time from ``FrameTime`` / ``FrameTimeVector`` / ``CineRate`` / ``RecommendedDisplayFrameRate``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom import basic_meta_of, codec_hint, first_window_of, floats_of, is_dicom_file, read_dataset
from .errors import ImageReadError, MissingCodecError
from .formats import check_exists, extension
from .windows import WindowSpec, choose_intensity

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VideoReadError",
    "VideoSource",
    "is_video_path",
    "open_video",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".gif")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
DEFAULT_FPS = 25.0  # when a source states no rate (frame folders, DICOM without frame time)


class VideoReadError(ImageReadError):
    """A video that cannot be opened, decoded, or has no frames."""


@dataclass
class VideoSource:
    """An opened video: where it is, its frame rate and size, and a frame iterator.

    ``n_frames`` is the count the container states (exact for folders and DICOM; for video
    files FFmpeg's estimate, used for the progress bar and ETA only).
    """

    path: Path
    kind: str  # "video", "gif", "frames", "dicom"
    fps: float
    n_frames: int | None
    height: int
    width: int
    meta: dict[str, Any] = field(default_factory=dict)
    _frames: Any = field(default=None, repr=False)

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 frames in display order, one at a time."""
        return self._frames()


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_video_path(path: str | Path) -> bool:
    """A video file, a GIF, a multi-frame DICOM with more than one frame, or a folder of image frames."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and extension(f) in FRAME_EXTENSIONS]
        return bool(files) and not any(extension(f) == ".dcm" or is_dicom_file(f) for f in files)
    return p.is_file() and extension(p) in VIDEO_EXTENSIONS


def _open_capture(path: Path, kind: str) -> VideoSource:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoReadError(
            path,
            "OpenCV/FFmpeg cannot open it as a video (not a video, or an unsupported container/codec)",
            "convert it, e.g. `ffmpeg -i in.xyz -c:v libx264 out.mp4`, or pass a folder of frames",
        )
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoReadError(
            path,
            "no frame could be decoded (zero frames, or a codec OpenCV's FFmpeg lacks)",
            "check it plays (ffprobe), or re-encode it with `ffmpeg -i in -c:v libx264 out.mp4`",
        )
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    if not np.isfinite(fps) or fps <= 0:
        logger.warning("%s: no frame rate in the container; using %.0f fps", path, DEFAULT_FPS)
        fps = DEFAULT_FPS

    def frames() -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(path))
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    h, w = first.shape[:2]
    return VideoSource(path, kind, fps, count if count > 0 else None, h, w, {"reader": "opencv"}, frames)


def _open_frame_folder(path: Path, window: WindowSpec) -> VideoSource:
    from .api import read_rgb

    files = sorted((f for f in path.iterdir() if f.is_file() and extension(f) in FRAME_EXTENSIONS), key=_natural_key)
    if not files:
        raise VideoReadError(
            path, "the folder holds no image frames", f"put frames with one of {', '.join(FRAME_EXTENSIONS)} in it"
        )
    first = read_rgb(files[0], window=window)
    h, w = first.shape[:2]

    def frames() -> Iterator[np.ndarray]:
        for f in files:
            rgb = read_rgb(f, window=window)
            if rgb.shape[:2] != (h, w):
                raise VideoReadError(
                    f, f"frame size {rgb.shape[1]}x{rgb.shape[0]} differs from the first frame's {w}x{h}"
                )
            yield rgb

    return VideoSource(path, "frames", DEFAULT_FPS, len(files), h, w, {"files": len(files)}, frames)


def _dicom_fps(ds) -> float | None:
    """Frames per second from the cine module (FrameTime in ms, its vector, or a stated rate)."""
    frame_time = floats_of(ds.get("FrameTime"))
    if frame_time and frame_time[0] > 0:
        return 1000.0 / frame_time[0]
    vector = floats_of(ds.get("FrameTimeVector"))
    if vector and len(vector) > 1:
        steps = [v for v in vector[1:] if v > 0]
        if steps:
            return 1000.0 / float(np.mean(steps))
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = floats_of(ds.get(tag))
        if rate and rate[0] > 0:
            return float(rate[0])
    return None


def _open_dicom(path: Path, window: WindowSpec) -> VideoSource:
    from pydicom.pixels import apply_modality_lut, iter_pixels

    ds = read_dataset(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:  # the header alone was read: an image has its size
        raise VideoReadError(path, "DICOM file has no pixel data", "pass an image DICOM (ultrasound cine, XA, ...)")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    color = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    fps = _dicom_fps(ds)
    if fps is None:
        logger.warning("%s: no FrameTime/CineRate in the DICOM; using %.0f fps", path, DEFAULT_FPS)
        fps = DEFAULT_FPS
    rows, cols = int(ds.Rows), int(ds.Columns)

    def raw_frames() -> Iterator[np.ndarray]:
        try:
            for arr in iter_pixels(path):
                yield arr
        except Exception as exc:  # noqa: BLE001 - pydicom plugins raise Runtime/Value/Key errors
            if ts is not None and ts.is_compressed:
                raise MissingCodecError(path, f"cannot decode '{ts.name}' frames ({exc})", codec_hint(ts)) from exc
            raise VideoReadError(path, f"frames could not be decoded ({type(exc).__name__}: {exc})") from exc

    mapping = None
    if not color:
        first = next(raw_frames())
        bits = ds.get("BitsStored") or ds.get("BitsAllocated")
        mapping = choose_intensity(
            apply_modality_lut(first, ds).astype(np.float32),
            window=window,
            modality=ds.get("Modality"),
            invert=photometric == "MONOCHROME1",
            source_bits=int(bits) if bits else None,
            file_window=first_window_of(ds),
        )
        logger.info("%s: intensity %s (from the first frame, shared by all)", path, mapping.description)

    def frames() -> Iterator[np.ndarray]:
        for arr in raw_frames():
            if color:
                if photometric == "PALETTE COLOR":
                    from pydicom.pixels import apply_color_lut

                    arr = apply_color_lut(arr, ds)
                rgb = np.asarray(arr)[..., :3]
                if rgb.dtype != np.uint8:
                    rgb = np.clip(rgb / (257.0 if rgb.max() > 255 else 1.0), 0, 255).astype(np.uint8)
                yield np.ascontiguousarray(rgb)
            else:
                gray = mapping.apply(apply_modality_lut(arr, ds).astype(np.float32))
                yield np.repeat(gray[..., None], 3, axis=2)

    meta = {**basic_meta_of(ds), "frame_time_ms": 1000.0 / fps}
    return VideoSource(path, "dicom", fps, n, rows, cols, meta, frames)


def open_video(path: str | Path, window: WindowSpec = None) -> VideoSource:
    """Open any supported video source; errors name the file, the problem and the fix."""
    p = check_exists(path)
    if p.is_dir():
        return _open_frame_folder(p, window)
    if is_dicom_file(p) or extension(p) == ".dcm":
        return _open_dicom(p, window)
    ext = extension(p)
    if ext not in VIDEO_EXTENSIONS:
        raise VideoReadError(
            p,
            f"'{ext or p.name}' is not a video format this reads",
            f"use {', '.join(VIDEO_EXTENSIONS)}, a multi-frame DICOM or a folder of frames",
        )
    return _open_capture(p, "gif" if ext == ".gif" else "video")
