"""summary.csv of a batch: one row per input and prompt, appended and flushed as each input finishes.

Read back with :func:`load_summary` (``csv.DictReader``: every value is a string).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .files import atomic_path

__all__ = ["SUMMARY_FIELDS", "SummaryWriter", "load_summary", "summary_row", "write_summary"]

SUMMARY_FIELDS = [
    "file",
    "kind",
    "prompt",
    "detections",
    "area_px",
    "voxels",  # volumes: the prompt's value in labels.nii.gz
    "volume_ml",
    "seconds",
    "status",
    "error",
    "prompt_mask_voxels",  # volumes: the prompt's own mask, before overlaps went to one prompt
    "prompt_mask_volume_ml",
]


def summary_row(**values: Any) -> dict:
    """One summary.csv row; fields not given are left empty."""
    return {name: values.get(name, "") for name in SUMMARY_FIELDS}


class SummaryWriter:
    """summary.csv (or a rank's part of it), rewritten at the start, then one flushed append per finished input."""

    def __init__(self, path: Path):
        self.path = path
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            csv.DictWriter(fh, SUMMARY_FIELDS).writeheader()

    def add(self, rows: list[dict]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, SUMMARY_FIELDS).writerows(rows)
            fh.flush()


def write_summary(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def load_summary(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
