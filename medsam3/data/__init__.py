"""COCO data for concept (text-prompted) segmentation: layouts, dataset, transforms, batching.

A leaf: imports nothing from medsam3 outside ``data`` (the training loop imports it, not the reverse).
"""

from .coco import CocoConceptDataset, ConceptQuery, ConceptSample, DatasetError
from .collate import BatchQuery, ConceptBatch, collate
from .layout import ROBOFLOW_ANNOTATION_NAME, SplitPaths, resolve_split
from .transforms import AugmentConfig, augment, load_rgb_image, normalize_image, resize_image

__all__ = [
    "AugmentConfig",
    "BatchQuery",
    "CocoConceptDataset",
    "ConceptBatch",
    "ConceptQuery",
    "ConceptSample",
    "DatasetError",
    "ROBOFLOW_ANNOTATION_NAME",
    "SplitPaths",
    "augment",
    "collate",
    "load_rgb_image",
    "normalize_image",
    "resize_image",
    "resolve_split",
]
