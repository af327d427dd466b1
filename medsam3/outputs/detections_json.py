"""Predictions in the formats other tools read: COCO RLE in JSON, COCO results, one PNG mask per prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .detections import Detections
from .files import save_png


__all__ = ["coco_results", "decode_rle", "encode_rle", "prompt_slug", "results_to_json", "write_prompt_masks"]


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
                "unknown_concept": det.unknown_concept,
                "num_detections": len(det),
                "detections": [
                    {"score": float(s), "box_xyxy": [float(v) for v in b], "mask": encode_rle(m)}
                    for b, s, m in zip(det.boxes, det.scores, det.masks)
                ],
            }
            for det in results
        ],
    }


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
