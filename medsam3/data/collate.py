"""Batching of ``CocoConceptDataset`` samples.

SAM3 answers one prompt per forward row, so the batch is *flat over queries*: every query keeps the
index of its image, and the trainer runs the vision encoder once per image and indexes (or
``expand``s) the features per query. Tokenisation is the trainer's job (it owns the processor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch

from .coco import ConceptSample

__all__ = ["BatchQuery", "ConceptBatch", "collate"]


class BatchQuery(TypedDict):
    image_index: int  # row of ``pixel_values``
    prompt: str
    category_id: int
    boxes: torch.Tensor  # (N, 4) float32 normalised cxcywh
    masks: torch.Tensor  # (N, m, m) float32 in {0, 1}
    mask_valid: torch.Tensor  # (N,) bool
    is_negative: bool


class ConceptBatch(TypedDict):
    pixel_values: torch.Tensor  # (B, 3, R, R)
    queries: list[BatchQuery]  # flat, image by image, in sample order
    query_image_index: torch.Tensor  # (Q,) long, == [q["image_index"] for q in queries]
    prompts: list[str]  # (Q,)
    is_negative: torch.Tensor  # (Q,) bool
    image_ids: list[int]  # (B,)
    file_names: list[str]  # (B,)
    original_sizes: list[tuple[int, int]]  # (B,) (height, width)


def collate(samples: Sequence[ConceptSample]) -> ConceptBatch:
    """Stack images and flatten queries; masks become float (what the loss consumes)."""
    if not samples:
        raise ValueError("collate() got an empty list of samples")
    queries: list[BatchQuery] = []
    for image_index, sample in enumerate(samples):
        for q in sample["queries"]:
            queries.append(
                BatchQuery(
                    image_index=image_index,
                    prompt=q["prompt"],
                    category_id=q["category_id"],
                    boxes=q["boxes"].to(torch.float32),
                    masks=q["masks"].to(torch.float32),
                    mask_valid=q["mask_valid"],
                    is_negative=q["is_negative"],
                )
            )
    return ConceptBatch(
        pixel_values=torch.stack([s["pixel_values"] for s in samples]),
        queries=queries,
        query_image_index=torch.tensor([q["image_index"] for q in queries], dtype=torch.long),
        prompts=[q["prompt"] for q in queries],
        is_negative=torch.tensor([q["is_negative"] for q in queries], dtype=torch.bool),
        image_ids=[s["image_id"] for s in samples],
        file_names=[s["file_name"] for s in samples],
        original_sizes=[s["original_size"] for s in samples],
    )
