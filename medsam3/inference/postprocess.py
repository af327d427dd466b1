"""From SAM3's per-query outputs to detections: score, threshold, NMS, masks at original size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

__all__ = ["Detections", "detection_scores", "postprocess_query_outputs"]


@dataclass
class Detections:
    """What one text prompt found in one image, best score first.

    ``boxes`` are xyxy in pixels of the original image, ``masks`` boolean at its resolution.
    """

    prompt: str
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    masks: np.ndarray  # (N, H, W) bool

    def __len__(self) -> int:
        return len(self.scores)

    def semantic_mask(self) -> np.ndarray:
        """Union of all detections (H, W): the mask Dice is computed on."""
        return self.masks.any(axis=0) if len(self) else np.zeros(self.masks.shape[1:], dtype=bool)


def detection_scores(pred_logits: torch.Tensor, presence_logits: torch.Tensor | None) -> torch.Tensor:
    """SAM3's score: sigmoid(query logit) x sigmoid(presence logit), the presence gating every query."""
    scores = pred_logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid()
    return scores


def postprocess_query_outputs(
    prompt: str,
    scores: torch.Tensor,
    boxes_xyxy_norm: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    nms_iou: float | None = 0.5,
) -> Detections:
    """Detections of one prompt: ``scores`` (Q,), ``boxes`` (Q, 4) normalised xyxy, masks (Q, h, w) logits."""
    height, width = image_size
    keep = torch.nonzero(scores > threshold).flatten()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes_xyxy_norm.device)
    boxes = boxes_xyxy_norm[keep].float() * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    kept_scores = scores[keep].float()
    if nms_iou is not None and nms_iou < 1.0 and len(keep) > 1:
        order = nms(boxes, kept_scores, nms_iou)  # sorted by decreasing score
    else:
        order = torch.argsort(kept_scores, descending=True)
    keep, boxes, kept_scores = keep[order], boxes[order], kept_scores[order]
    if len(keep):
        # Upsample logits, not binary masks, so edges are smooth; logit > 0 is probability > 0.5.
        masks = (
            F.interpolate(mask_logits[keep][None].float(), size=(height, width), mode="bilinear", align_corners=False)[
                0
            ]
            > 0
        )
    else:
        masks = torch.zeros((0, height, width), dtype=torch.bool)
    return Detections(
        prompt=prompt,
        boxes=boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
        scores=kept_scores.cpu().numpy().astype(np.float32),
        masks=masks.cpu().numpy(),
    )
