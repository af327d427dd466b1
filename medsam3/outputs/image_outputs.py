"""The one writer of a 2D image's results: overlay PNG, detections JSON, one mask PNG per prompt.

``infer_sam.py --image``, the batch mode and the web app all call :func:`write_image_outputs`, so
the three write the same bytes for the same detections; they differ only in where files go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detections import Detections
from .detections_json import results_to_json, write_prompt_masks
from .files import save_png, write_json
from .overlays import overlay_detections

__all__ = ["ImageOutputPaths", "write_image_outputs"]


@dataclass(frozen=True)
class ImageOutputPaths:
    """Where each file goes; None skips it."""

    overlay: Path | None = None
    detections_json: Path | None = None
    masks_dir: Path | None = None


def write_image_outputs(
    results: Sequence[Detections],
    rgb: np.ndarray,
    source: str,
    paths: ImageOutputPaths,
    **record_fields,
) -> tuple[dict, list[Path]]:
    """Write the requested files for ``results`` on ``rgb``; returns the JSON record and the paths written.

    ``source`` is recorded as the record's ``image``; ``record_fields`` (adapter, threshold, nms_iou,
    intensity, ...) are recorded beside it. The JSON is written last, so its presence means the
    overlay and masks are complete (the batch mode's resume relies on that).
    """
    written: list[Path] = []
    if paths.overlay is not None:
        save_png(overlay_detections(rgb, results), paths.overlay)
        written.append(Path(paths.overlay))
    if paths.masks_dir is not None:
        written += write_prompt_masks(results, paths.masks_dir)
    record = results_to_json(results, source, rgb.shape[:2], **record_fields)
    if paths.detections_json is not None:
        write_json(record, paths.detections_json)
        written.append(Path(paths.detections_json))
    return record, written
