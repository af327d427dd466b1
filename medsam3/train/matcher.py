"""One-to-one Hungarian matching of SAM3 query predictions to a prompt's target instances.

Same cost as SAM3's training matcher (``BinaryHungarianMatcherV2(focal=True)``, the one upstream
MedSAM3 uses): ``2 * focal class cost + 5 * L1(cxcywh) + 2 * (-GIoU)``. The focal class cost is the
focal loss of calling the query positive minus that of calling it negative, computed on the query's
own logit (presence is not folded in, as in SAM3's image model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "MatchIndices"]

MatchIndices = tuple[torch.Tensor, torch.Tensor]
"""(prediction indices, target indices), both int64 of equal length, on the predictions' device."""

_INVALID_COST = 1e8


class HungarianMatcher:
    """Match the ``Q`` predictions of each row to that row's targets.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three cost terms (SAM3: 2, 5, 2).
        focal_alpha, focal_gamma: focal parameters of the class cost (SAM3: 0.25, 2).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(
        self, pred_logits: torch.Tensor, pred_boxes_xyxy: torch.Tensor, target_cxcywh: torch.Tensor
    ) -> torch.Tensor:
        """(Q,) logits, (Q, 4) xyxy predictions, (N, 4) cxcywh targets -> (Q, N) float32 cost."""
        logits = pred_logits.float()
        prob = logits.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        pos = -alpha * (1 - prob) ** gamma * F.logsigmoid(logits)
        neg = -(1 - alpha) * prob**gamma * F.logsigmoid(-logits)
        cost_class = (pos - neg)[:, None]
        pred_xyxy = pred_boxes_xyxy.float()
        tgt = target_cxcywh.float()
        cost_bbox = torch.cdist(box_convert(pred_xyxy, "xyxy", "cxcywh"), tgt, p=1)
        cost_giou = -generalized_box_iou(pred_xyxy, box_convert(tgt, "cxcywh", "xyxy"))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        # Degenerate boxes can give NaN GIoU; scipy refuses non-finite costs.
        return torch.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=-_INVALID_COST)

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        target_boxes: Sequence[torch.Tensor],
    ) -> list[MatchIndices]:
        """Match every row.

        Args:
            pred_logits: (B, Q) class logits.
            pred_boxes: (B, Q, 4) normalised **xyxy** boxes (what ``Sam3Model`` returns).
            target_boxes: B tensors (N_b, 4) of normalised **cxcywh** boxes (what the dataset yields);
                N_b may be 0.

        Returns one ``(pred_idx, tgt_idx)`` pair per row; when N_b > Q only Q targets are matched.
        """
        if pred_logits.dim() != 2 or pred_boxes.shape[:2] != pred_logits.shape:
            raise ValueError(
                f"expected pred_logits (B, Q) and pred_boxes (B, Q, 4), got {tuple(pred_logits.shape)} "
                f"and {tuple(pred_boxes.shape)}"
            )
        if len(target_boxes) != pred_logits.shape[0]:
            raise ValueError(f"{len(target_boxes)} target sets for {pred_logits.shape[0]} prediction rows")
        device = pred_logits.device
        empty = torch.empty(0, dtype=torch.long, device=device)
        rows = [b for b, tgt in enumerate(target_boxes) if tgt.shape[0] > 0]
        # All cost matrices are built on the device, then copied to the CPU in one transfer.
        costs = [self.cost_matrix(pred_logits[b], pred_boxes[b], target_boxes[b].to(device)) for b in rows]
        host: list[np.ndarray] = []
        if costs:
            flat = torch.cat([c.flatten() for c in costs]).cpu().numpy()
            offsets = np.cumsum([0] + [c.numel() for c in costs])
            host = [flat[offsets[i] : offsets[i + 1]].reshape(c.shape) for i, c in enumerate(costs)]
        result: list[MatchIndices] = [(empty, empty) for _ in target_boxes]
        for b, cost in zip(rows, host):
            pred_idx, tgt_idx = linear_sum_assignment(cost)
            result[b] = (
                torch.as_tensor(np.asarray(pred_idx), dtype=torch.long, device=device),
                torch.as_tensor(np.asarray(tgt_idx), dtype=torch.long, device=device),
            )
        return result
