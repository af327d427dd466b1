"""From SAM3's per-query outputs to detections: score, threshold, NMS, masks at original size.

Order matters for speed: scores, thresholding and NMS run on the small per-query tensors first,
and only the masks that survive are upsampled to the image's size, in one batched call on the
model's device. Upsampling every query's mask and thresholding it afterwards was ~46% of the
time per prompt (docs/architecture.md, "Post-processing").
"""

from __future__ import annotations

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


DUPLICATE_MASK_IOU = 0.8
"""Two detections whose masks overlap more than this (and more than the NMS IoU) are one object.

Box NMS alone keeps loose boxes around the same mask (the demo found the aorta 16 times). 0.8 rather
than the box NMS's 0.5, which also drops the distinct parts of overlapping detections: the demo's
stomach text Dice on its held-out slab is 0.375 without mask NMS, 0.369 with it at 0.8 (0.345 at 0.5
on the mask decoder's grid; ``scripts/evaluate.py --weights demo``, docs/evaluation.md); the other
organs move by < 0.001."""


def distinct_masks(masks: torch.Tensor, iou: float | None) -> torch.Tensor:
    """Indices of ``masks`` (N, H, W) bool, best first, that are not empty and not duplicates.

    A mask overlapping an earlier (better-scored) kept one with IoU above ``iou`` is a duplicate;
    ``iou`` None drops empty masks only. Exact, at the resolution given (the image's): each pair is
    compared inside the intersection of the two masks' bounding boxes, and pairs whose boxes do not
    meet are not compared at all, so a few large masks or many small ones stay cheap.
    """
    areas = masks.flatten(1).sum(dim=1).tolist()
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    kept: list[int] = []
    spans: dict[int, tuple[int, int, int, int]] = {}
    for i, area in enumerate(areas):
        if area == 0:
            continue
        ys, xs = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
        spans[i] = (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
        duplicate = False
        for k in kept if iou is not None else ():
            y0, y1 = max(spans[i][0], spans[k][0]), min(spans[i][1], spans[k][1])
            x0, x1 = max(spans[i][2], spans[k][2]), min(spans[i][3], spans[k][3])
            if y0 >= y1 or x0 >= x1:
                continue
            inter = int((masks[i, y0:y1, x0:x1] & masks[k, y0:y1, x0:x1]).sum())
            if inter / (area + areas[k] - inter) > iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=masks.device)


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
    masks = upsample_mask_logits(mask_logits[keep], (height, width))
    nms_on = nms_iou is not None and nms_iou < 1.0
    # a detection of nothing is no detection; two of one mask are one
    distinct = distinct_masks(masks, max(nms_iou, DUPLICATE_MASK_IOU) if nms_on else None)
    boxes, kept_scores, masks = boxes[distinct], kept_scores[distinct], masks[distinct]
    return Detections(
        prompt=prompt,
        boxes=boxes.cpu().numpy().reshape(-1, 4),
        scores=kept_scores.cpu().numpy(),
        masks=masks.cpu().numpy(),
    )
