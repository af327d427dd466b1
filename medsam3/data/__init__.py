"""COCO data for concept (text-prompted) segmentation: layouts, dataset, transforms, batching.

A leaf: imports nothing from medsam3 outside ``data`` (the training loop imports it, not the reverse).
"""

from .layout import ROBOFLOW_ANNOTATION_NAME, SplitPaths, resolve_split

# The dataset, batching and transforms need torch: imported on first use, so that checking a data
# layout (layout, above) answers in a moment, before torch loads. The batching function is
# ``medsam3.data.collate.collate``: lazily, the package name ``collate`` can only be its module.
_LAZY = {
    "CocoConceptDataset": "coco",
    "ConceptQuery": "coco",
    "ConceptSample": "coco",
    "DatasetError": "coco",
    "BatchQuery": "collate",
    "ConceptBatch": "collate",
    "AugmentConfig": "transforms",
    "augment": "transforms",
    "load_rgb_image": "transforms",
    "normalize_image": "transforms",
    "resize_image": "transforms",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "load_rgb_image",
    "normalize_image",
    "resize_image",
    "resolve_split",
]
