"""The records a COCO concept dataset is built from, and the checks each annotation entry passes.

Kept apart from :mod:`.coco` so the dataset class reads as parse -> index -> sample.
"""

from __future__ import annotations

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

__all__ = ["ConceptQuery", "ConceptSample", "DatasetError"]

logger = logging.getLogger("medsam3.data.coco")  # one logger name for the dataset's skip warnings

_MAX_WARNINGS_PER_KIND = 20


class DatasetError(ValueError):
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
