"""One training forward: vision once per image, one row per (image, prompt) query, the geometry CLS.

``TrainForward`` wraps the (PEFT) SAM3 model so DDP sees one ``forward`` that produces everything
the loss needs: ``get_vision_features`` runs once on the batch's images, the features are indexed
per query (``query_image_index``), and every query carries one padding box with label
``PAD_LABEL`` so that the geometry encoder appends its CLS token exactly as ``Predictor`` does at
inference (docs/architecture.md, "Geometry CLS").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..inference.predictor import padding_geometry, select_vision, tokenize_prompts
from ..model import unwrap
from .loss import DecoderLayerCapture

__all__ = ["TrainForward", "batch_inputs"]


class TrainForward(nn.Module):
    """``forward(batch tensors) -> loss input dict`` (see ``Sam3Loss``), DDP-wrappable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        query_image_index: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_boxes: torch.Tensor,
        input_boxes_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        sam = unwrap(self.model)
        vision = sam.get_vision_features(pixel_values=pixel_values)
        per_query = select_vision(vision, query_image_index)
        with DecoderLayerCapture(sam) as capture:
            outputs = sam(
                vision_embeds=per_query,
                input_ids=input_ids,
                attention_mask=attention_mask,
                input_boxes=input_boxes,
                input_boxes_labels=input_boxes_labels,
            )
            return capture.predictions(outputs)


def batch_inputs(batch: dict[str, Any], processor: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Model inputs of a ``ConceptBatch`` on ``device``."""
    tokens = tokenize_prompts(processor.tokenizer, batch["prompts"])
    boxes, labels = padding_geometry(len(batch["prompts"]))
    return {
        "pixel_values": batch["pixel_values"].to(device, non_blocking=True),
        "query_image_index": batch["query_image_index"].to(device),
        "input_ids": tokens["input_ids"].to(device),
        "attention_mask": tokens["attention_mask"].to(device),
        "input_boxes": boxes.to(device, dtype=batch["pixel_values"].dtype),
        "input_boxes_labels": labels.to(device),
    }
