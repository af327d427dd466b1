"""Writing predictions for other tools: COCO RLE in JSON, one PNG mask per prompt."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .postprocess import Detections

__all__ = ["atomic_path", "coco_results", "decode_rle", "encode_rle", "prompt_slug", "results_to_json",
           "save_png", "write_json", "write_prompt_masks"]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a (H, W) boolean mask, with ``counts`` as text so it fits in JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def prompt_slug(prompt: str) -> str:
    """A file-name-safe form of a prompt ("liver tumor" -> "liver_tumor")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", prompt.strip()).strip("_") or "prompt"


def results_to_json(results: Sequence[Detections], image: str, image_size: tuple[int, int], **extra) -> dict:
    """Per prompt: detections with score, xyxy box in pixels and the mask as COCO RLE."""
    height, width = image_size
    return {
        "image": image,
        "height": int(height),
        "width": int(width),
        **extra,
        "prompts": [
            {
                "prompt": det.prompt,
                "num_detections": len(det),
                "detections": [
                    {"score": float(s), "box_xyxy": [float(v) for v in b], "mask": encode_rle(m)}
                    for b, s, m in zip(det.boxes, det.scores, det.masks)
                ],
            }
            for det in results
        ],
    }


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same extension) that replaces ``path`` when the block ends.

    A reader never sees a half-written file, and an interrupted write leaves the previous file
    (or none) in place: ``with atomic_path(p) as tmp: image.save(tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}_{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(data, path: str | Path) -> Path:
    """Write ``data`` as JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image or uint8 array atomically (format from the extension, PNG when there is none)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format=None if tmp.suffix else "PNG")
    return Path(path)


def coco_results(record: dict, image_id: int, category_ids: dict[str, int]) -> list[dict]:
    """The detections of one :func:`results_to_json` record as COCO results entries (what
    ``COCO.loadRes`` reads): image id, category id of the prompt, RLE segmentation, score, and the
    mask's xywh box and area."""
    out = []
    for entry in record["prompts"]:
        for det in entry["detections"]:
            rle = det["mask"]
            encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            out.append({"image_id": int(image_id), "category_id": int(category_ids[entry["prompt"]]),
                        "segmentation": rle, "score": float(det["score"]),
                        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(encoded)],
                        "area": int(mask_utils.area(encoded))})
    return out


def write_prompt_masks(results: Sequence[Detections], out_dir: str | Path) -> list[Path]:
    """One 8-bit PNG per prompt (255 = any detection), named ``<index>_<prompt>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, det in enumerate(results):
        path = out_dir / f"{k:02d}_{prompt_slug(det.prompt)}.png"
        save_png(det.semantic_mask().astype(np.uint8) * 255, path)
        paths.append(path)
    return paths
