"""CPU stand-ins for the two hub kernels transformers' SAM3 video post-processing uses.

``Sam3VideoModel`` runs mask NMS on detections and fills small holes / removes sprinkles through
``kernels-community/cv-utils``, fetched from the Hugging Face hub at first use. Without the
``kernels`` package or the hub (offline machines, this project's CI) transformers *skips* both,
and every duplicate query above the threshold becomes its own tracked object. These two functions
do the same computations with torch and OpenCV, and are installed only when the hub kernel could
not be loaded.
"""

from __future__ import annotations

import logging
import types

import numpy as np
import torch

__all__ = ["cc_2d", "ensure_postprocess_kernels", "generic_nms"]

logger = logging.getLogger(__name__)


def generic_nms(ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float, use_iou_matrix: bool = True):
    """Greedy NMS on a precomputed IoU matrix: indices (into ``scores``) kept, best first."""
    if not use_iou_matrix:
        raise NotImplementedError("only the IoU-matrix form is used by Sam3VideoModel")
    order = torch.argsort(scores, descending=True).tolist()
    iou = ious.detach().cpu().numpy()
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=scores.device)


def cc_2d(mask: torch.Tensor, get_counts: bool = True):
    """8-connected components of (N, 1, H, W) uint8 masks: labels and, per pixel, its component's area."""
    import cv2

    arr = mask.detach().cpu().numpy().astype(np.uint8)
    labels = np.zeros(arr.shape, np.int32)
    counts = np.zeros(arr.shape, np.int32)
    for n in range(arr.shape[0]):
        num, lab, stats, _ = cv2.connectedComponentsWithStats(arr[n, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0  # label 0 is background, not a component
        labels[n, 0] = lab
        counts[n, 0] = np.where(lab > 0, area[lab], 0)
    out = torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)
    return out if get_counts else out[0]


def ensure_postprocess_kernels() -> str:
    """Load the hub kernel as transformers would; if that fails, install the CPU stand-ins. Returns which."""
    from transformers.models.sam3_video import modeling_sam3_video as video_module

    video_module._load_cv_utils_kernel_once()
    if video_module.cv_utils_kernel:
        return "hub kernel (kernels-community/cv-utils)"
    video_module.cv_utils_kernel = types.SimpleNamespace(generic_nms=generic_nms, cc_2d=cc_2d)
    logger.info("SAM3 video: mask NMS and hole filling run on medsam3's CPU stand-ins (hub kernel unavailable)")
    return "medsam3 CPU stand-ins"
