"""What users get: overlays and montages, detections as JSON/COCO RLE, PNG masks, atomic files.

A leaf: imports nothing from medsam3 outside ``outputs`` (``Detections``, the type every writer
reads, is defined here). 2D results are written by one function, :func:`write_image_outputs`. Label-map NIfTI writers live in :mod:`medsam3.io.nifti`, beside their reader,
because alignment with the source volume is an I/O concern.
"""

from .detections import Detections
from .detections_json import coco_results, decode_rle, encode_rle, prompt_slug, results_to_json, write_prompt_masks
from .files import atomic_path, save_png, write_json
from .image_outputs import ImageOutputPaths, write_image_outputs
from .overlays import PALETTE, label_montage, overlay_detections, overlay_labels

__all__ = [
    "Detections",
    "ImageOutputPaths",
    "PALETTE",
    "atomic_path",
    "coco_results",
    "decode_rle",
    "encode_rle",
    "label_montage",
    "overlay_detections",
    "overlay_labels",
    "prompt_slug",
    "results_to_json",
    "save_png",
    "write_image_outputs",
    "write_json",
    "write_prompt_masks",
]
