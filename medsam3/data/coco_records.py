"""The records a COCO concept dataset is built from, and the checks each annotation entry passes.

Kept apart from :mod:`.coco` so the dataset class reads as parse -> index -> sample.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import UserError

__all__ = ["ConceptQuery", "ConceptSample", "DatasetError", "clean_annotation"]

logger = logging.getLogger("medsam3.data.coco")  # one logger name for the dataset's skip warnings

_MAX_WARNINGS_PER_KIND = 20


class DatasetError(UserError):
    """The annotation file is unusable, or nothing usable is left after skipping bad entries."""


class ConceptQuery(TypedDict):
    """One text query of a sample; ``boxes``/``masks`` are empty (N=0) for a negative."""

    prompt: str
    category_id: int
    boxes: torch.Tensor  # (N, 4) float32, normalised cxcywh in [0, 1]
    masks: torch.Tensor  # (N, m, m) bool at mask_resolution
    mask_valid: torch.Tensor  # (N,) bool, False for box-only annotations
    is_negative: bool


class ConceptSample(TypedDict):
    pixel_values: torch.Tensor  # (3, R, R) float32, normalised like Sam3ImageProcessor
    image_id: int
    file_name: str
    original_size: tuple[int, int]  # (height, width) of the annotation frame
    queries: list[ConceptQuery]


@dataclass
class Concept:
    key: str
    prompt: str
    category_id: int  # smallest category id carrying this prompt
    synonyms: list[str] = field(default_factory=list)


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    instances: dict[str, list[int]]  # concept key -> usable annotation ids
    present: set[str]  # concept keys with any annotation here (never negatives for this image)


class SkipLog:
    """Warn per skipped item (capped per kind) and summarise at the end."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _MAX_WARNINGS_PER_KIND:
            logger.warning("%s: skipping %s", self.source, message)
        elif self.counts[kind] == _MAX_WARNINGS_PER_KIND + 1:
            logger.warning("%s: further skipped %s are not listed individually", self.source, kind)

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))


def concept_key(text: str) -> str:
    return " ".join(text.split()).lower()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def polygon_area(coords: Sequence[float]) -> float:
    xs, ys = np.asarray(coords[0::2], dtype=np.float64), np.asarray(coords[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def escapes_root(file_name: str) -> bool:
    """Lexical check (symlinks inside the root are the user's business)."""
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", file_name):
        return True
    parts = Path(os.path.normpath(file_name.replace("\\", "/"))).parts
    return bool(parts) and parts[0] == ".."


def verify_image(path: Path) -> tuple[int, int]:
    """Open, verify and (for JPEG, cheaply at reduced scale) decode; returns (height, width)."""
    with Image.open(path) as img:
        width, height = img.size
        img.verify()
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
    return height, width


def clean_annotation(source: Path, ann: dict[str, Any], rec: ImageRecord) -> dict[str, Any] | str:
    """Validated copy of ``ann`` (segmentation, bbox xywh, mask_valid) or the reason it is unusable.

    ``source``: the annotation file, named in warnings.
    """
    h, w = rec.height, rec.width
    segm = ann.get("segmentation")
    rle = None
    mask_valid = True
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        mask_valid = False
    elif isinstance(segm, list):
        polygons = []
        for poly in segm:
            if not isinstance(poly, list) or not all(is_number(v) for v in poly):
                return "polygon with non-numeric coordinates"
            # pycocotools rasterises in C with int arithmetic: far-away points overflow it (a crash)
            if not all(-w <= x <= 2 * w for x in poly[0::2]) or not all(-h <= y <= 2 * h for y in poly[1::2]):
                return f"polygon coordinates far outside the {w}x{h} image: {str(poly)[:80]}"
            if len(poly) < 6 or len(poly) % 2:
                continue
            if polygon_area(poly) <= 0.0:
                continue
            polygons.append([float(v) for v in poly])
        if not polygons:
            return f"empty or degenerate polygon(s) (fewer than 3 points or zero area): {str(segm)[:80]}"
        if len(polygons) < len(segm):
            logger.warning(
                "%s: annotation id=%s: dropped %d degenerate polygon part(s) of %d",
                source,
                ann.get("id"),
                len(segm) - len(polygons),
                len(segm),
            )
        segm = polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    elif isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2) or counts is None:
            return "RLE without 'size' and 'counts'"
        if not all(is_number(v) for v in size) or [int(size[0]), int(size[1])] != [h, w]:
            return f"RLE size {size} does not match the image size {[h, w]}"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "RLE counts must be non-negative integers"
            if sum(counts) != h * w:
                return f"RLE counts add up to {sum(counts)} pixels, the image has {h * w}"
        elif not isinstance(counts, (str, bytes)):
            return f"RLE counts must be a list or a string, not {type(counts).__name__}"
        try:
            rle = mask_utils.frPyObjects(segm, h, w) if isinstance(counts, list) else segm
            if not isinstance(counts, list):  # a compressed string: decode once, so a bad one is refused here
                decoded = mask_utils.decode(rle)
                if decoded.shape[:2] != (h, w):
                    return f"RLE decodes to {decoded.shape[:2]}, the image is {(h, w)}"
            area = float(mask_utils.area(rle))
        except (TypeError, ValueError, UnicodeError) as err:
            return f"unreadable RLE ({err})"
        if area <= 0:
            return "empty RLE mask"
        segm = copy.deepcopy(segm)
    else:
        return f"unsupported segmentation type {type(segm).__name__}"

    bbox = ann.get("bbox")
    box = None
    if isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox):
        x0, y0 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
        x1, y1 = min(float(w), float(bbox[0]) + float(bbox[2])), min(float(h), float(bbox[1]) + float(bbox[3]))
        if x1 > x0 and y1 > y0:
            box = [x0, y0, x1 - x0, y1 - y0]
    if box is None and rle is not None:
        derived = [float(v) for v in mask_utils.toBbox(rle)]
        if derived[2] > 0 and derived[3] > 0:
            box = derived
    if box is None:
        return "no valid bbox and no non-empty mask to derive one from"
    out: dict[str, Any] = {"bbox": box, "iscrowd": 0, "mask_valid": mask_valid, "area": box[2] * box[3]}
    if mask_valid:
        out["segmentation"] = segm
    return out
