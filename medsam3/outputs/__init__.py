"""What users get: overlays and montages, detections as JSON/COCO RLE, PNG masks, atomic files.

A leaf: imports nothing from medsam3 outside ``outputs`` at run time (``Detections`` is named in
annotations only). Label-map NIfTI writers live in :mod:`medsam3.io.nifti`, beside their reader,
because alignment with the source volume is an I/O concern.
"""

from .detections_json import coco_results, decode_rle, encode_rle, prompt_slug, results_to_json, write_prompt_masks
from .files import atomic_path, save_png, write_json
from .overlays import PALETTE, label_montage, overlay_detections, overlay_labels

__all__ = [
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
    "write_json",
    "write_prompt_masks",
]
