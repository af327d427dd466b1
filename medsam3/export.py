"""Writing predictions for other tools: COCO RLE in JSON, one PNG mask per prompt."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .postprocess import Detections

__all__ = ["decode_rle", "encode_rle", "prompt_slug", "results_to_json", "write_json", "write_prompt_masks"]


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


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def write_prompt_masks(results: Sequence[Detections], out_dir: str | Path) -> list[Path]:
    """One 8-bit PNG per prompt (255 = any detection), named ``<index>_<prompt>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, det in enumerate(results):
        path = out_dir / f"{k:02d}_{prompt_slug(det.prompt)}.png"
        Image.fromarray(det.semantic_mask().astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths
