"""Validation: loss on the valid split, and Dice/IoU per concept computed by ``medsam3.evaluation``.

The metrics are those of ``medsam3-evaluate --include-absent --protocol text`` on the same split
(same reader, cases, images, model path and summary: :func:`medsam3.evaluation.concept_means`), so
the number that picks ``best_model`` is the number evaluation reports for it. Under torchrun the
evaluator shards the images and rank 0 summarises; the summary is sent to every rank.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..data.coco import CocoConceptDataset
from ..data.collate import collate  # the module, not the lazy package (whose `collate` may be the submodule)
from ..evaluation import EvalOptions, Evaluator, best_thresholds, coco_set, concept_means
from ..inference.predictor import Predictor
from ..outputs import write_json
from .distributed import DistInfo, all_reduce_sum
from .forward import batch_inputs
from .loss import Sam3Loss

__all__ = ["THRESHOLD_GRID", "evaluate_loss", "evaluate_metrics"]

THRESHOLD_GRID = tuple(round(0.1 * k, 1) for k in range(1, 10))
"""Thresholds validation also scores, one model pass for all, to choose each concept's threshold."""

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_loss(
    forward: torch.nn.Module,
    criterion: Sam3Loss,
    dataset: CocoConceptDataset,
    processor: Any,
    device: torch.device,
    dist_info: DistInfo,
    batch_size: int,
    autocast: Any,
) -> float:
    """Mean total loss per batch over the valid split (model in eval mode, same prompts every time)."""
    dataset.set_epoch(0)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    for start in range(0, len(indices), batch_size):
        batch = collate([dataset[i] for i in indices[start : start + batch_size]])
        with autocast():
            preds = forward(**batch_inputs(batch, processor, device))
        losses = criterion(preds, batch["queries"])
        total[0] += float(losses["total"])
        total[1] += 1
    all_reduce_sum(total)
    return float(total[0] / total[1].clamp(min=1))


def _above(detections: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One image-prompt's kept detections at ``threshold`` (the sweep keeps those of its lowest threshold)."""
    keep = [i for i, score in enumerate(detections["scores"]) if score > threshold]
    out = {k: v for k, v in detections.items() if k != "protocol"}
    out["scores"] = [detections["scores"][i] for i in keep]
    out["boxes_xyxy"] = [detections["boxes_xyxy"][i] for i in keep]
    return out


def evaluate_metrics(
    predictor: Predictor,
    dataset: CocoConceptDataset,
    dist_info: DistInfo,
    threshold: float = 0.5,
    predictions_file: Path | None = None,
) -> dict[str, Any]:
    """Mean Dice/IoU per concept (and over concepts) and the false-positive rate on absent concepts.

    Every concept present in an image (with a mask) is scored there; every concept of the split
    without an annotation on the image is asked too (``false_positive_rate``: any predicted pixel).
    The headline numbers are at ``threshold``; ``concept_thresholds`` is, per concept, the threshold of
    :data:`THRESHOLD_GRID` (or ``threshold``) with the best mean over its validation cases, absent
    ones counting 1 when nothing is predicted, else 0. Training records it beside the adapter, and
    inference applies it (the run plan's rule: ``--threshold`` > per concept > recorded > 0.5).
    """
    options = EvalOptions(
        protocols=("text",), thresholds=tuple(sorted({threshold, *THRESHOLD_GRID})), include_absent=True
    )
    cases = coco_set(dataset.records, include_absent=True)
    evaluator = Evaluator(predictor, options, None, keep_detections=predictions_file is not None)
    report = evaluator.run(coco=cases, dist_info=dist_info)
    summary: dict[str, Any] = {}
    if report.is_main:
        for failure in report.failures:
            logger.warning("validation image %s not scored: %s", failure["case"], failure["reason"])
        at_threshold = [m for m in concept_means(report.rows) if m["threshold"] == threshold]
        (means,) = at_threshold or [{"dice": float("nan"), "iou": float("nan"), "per_concept": {}}]
        summary = {
            "dice": means["dice"],
            "iou": means["iou"],
            "per_concept": means["per_concept"],
            "false_positive_rate": means.get("false_positive_rate", float("nan")),
            "concept_thresholds": {
                b["concept"]: b["threshold"]
                for b in best_thresholds(report.rows, count_absent=True)
                if b["threshold"] is not None
            },
        }
        if predictions_file is not None:
            write_json([_above(d, threshold) for d in report.detections], predictions_file)
    if dist_info.enabled:  # every rank compares the same number with its best so far
        import torch.distributed as dist

        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary
