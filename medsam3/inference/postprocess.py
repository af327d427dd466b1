"""From SAM3's per-query outputs to detections: score, threshold, NMS, masks at original size.

Order matters for speed: scores, thresholding and NMS run on the small per-query tensors first,
and only the masks that survive are upsampled to the image's size, in one batched call on the
model's device. Upsampling every query's mask and thresholding it afterwards was ~46% of the
time per prompt (docs/architecture.md, "Post-processing").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from ..outputs.detections import Detections

__all__ = [
    "Detections",
    "detection_scores",
    "distinct_masks",
    "postprocess_query_outputs",
    "upsample_mask_logits",
]

# Upsampled logits are materialised this many elements at a time (fp32: 256 MiB), so 200 kept
# masks of a 2048 px image do not need gigabytes at once.
_UPSAMPLE_CHUNK_ELEMENTS = 64 * 2**20


def detection_scores(pred_logits: torch.Tensor, presence_logits: torch.Tensor | None) -> torch.Tensor:
    """SAM3's score: sigmoid(query logit) x sigmoid(presence logit), the presence gating every query."""
    scores = pred_logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid()
    return scores


def _upsample_dtype(logits: torch.Tensor) -> torch.dtype:
    """The model's half dtype on CUDA (fast, and the sign of a logit survives it); fp32 on CPU,
    where bf16 interpolation is no faster and half-precision kernels are not all there."""
    if logits.device.type == "cuda" and logits.dtype in (torch.bfloat16, torch.float16):
        return logits.dtype
    return torch.float32


def upsample_mask_logits(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) logits -> (K, H, W) bool masks, on the logits' device.

    Logits, not binary masks, are upsampled (bilinear), so edges are smooth; logit > 0 is
    probability > 0.5. Batched over K, in chunks that bound the temporary float buffer.
    """
    k = mask_logits.shape[0]
    height, width = size
    out = torch.empty((k, height, width), dtype=torch.bool, device=mask_logits.device)
    if k == 0:
        return out
    dtype = _upsample_dtype(mask_logits)
    step = max(1, _UPSAMPLE_CHUNK_ELEMENTS // max(1, height * width))
    for start in range(0, k, step):
        chunk = mask_logits[start : start + step].to(dtype)[None]
        up = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False)[0]
        torch.gt(up, 0, out=out[start : start + step])
    return out


def distinct_masks(masks: torch.Tensor, nms_iou: float | None) -> torch.Tensor:
    """Indices of ``masks`` (N, h, w) bool, best first, that are not empty and not duplicates.

    A mask overlapping an earlier (better-scored) kept one with IoU above ``nms_iou`` is a duplicate
    (mask NMS at the same IoU as the box NMS). Run at the mask decoder's resolution, before upsampling.
    """
    flat = masks.flatten(1).float()
    area = flat.sum(dim=1)
    if nms_iou is None or nms_iou >= 1.0 or len(masks) < 2:
        return torch.nonzero(area > 0).flatten()
    inter = flat @ flat.T
    overlapping = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0) > nms_iou).cpu().numpy()
    kept = np.zeros(len(masks), dtype=bool)
    for i, nonempty in enumerate((area > 0).cpu().numpy()):
        kept[i] = nonempty and not overlapping[i, kept].any()
    return torch.from_numpy(np.flatnonzero(kept)).to(masks.device)


def postprocess_query_outputs(
    prompt: str,
    scores: torch.Tensor,
    boxes_xyxy_norm: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    nms_iou: float | None = 0.5,
) -> Detections:
    """Detections of one prompt: ``scores`` (Q,), ``boxes`` (Q, 4) normalised xyxy, masks (Q, h, w) logits.

    Threshold and NMS first, on the small tensors; only the kept masks are upsampled. NMS runs on the
    boxes, then on the masks (:func:`distinct_masks`): box NMS alone keeps loose boxes around one mask.
    """
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
        order = torch.argsort(kept_scores, descending=True, stable=True)
    keep, boxes, kept_scores = keep[order], boxes[order], kept_scores[order]
    distinct = distinct_masks(mask_logits[keep] > 0, nms_iou)
    keep, boxes, kept_scores = keep[distinct], boxes[distinct], kept_scores[distinct]
    masks = upsample_mask_logits(mask_logits[keep], (height, width))
    shown = masks.flatten(1).any(dim=1)  # a mask can vanish when upsampled: a detection of nothing is no detection
    boxes, kept_scores, masks = boxes[shown], kept_scores[shown], masks[shown]
    return Detections(
        prompt=prompt,
        boxes=boxes.cpu().numpy().reshape(-1, 4),
        scores=kept_scores.cpu().numpy(),
        masks=masks.cpu().numpy(),
    )
