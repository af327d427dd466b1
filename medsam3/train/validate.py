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
from ..evaluation import EvalOptions, Evaluator, coco_set, concept_means
from ..inference.predictor import Predictor
from ..outputs import write_json
from .distributed import DistInfo, all_reduce_sum
from .forward import batch_inputs
from .loss import Sam3Loss

__all__ = ["evaluate_loss", "evaluate_metrics"]

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
    """
    options = EvalOptions(protocols=("text",), thresholds=(threshold,), include_absent=True)
    cases = coco_set(dataset.records, include_absent=True)
    evaluator = Evaluator(predictor, options, None, keep_detections=predictions_file is not None)
    report = evaluator.run(coco=cases, dist_info=dist_info)
    summary: dict[str, Any] = {}
    if report.is_main:
        for failure in report.failures:
            logger.warning("validation image %s not scored: %s", failure["case"], failure["reason"])
        (means,) = concept_means(report.rows) or [{"dice": float("nan"), "iou": float("nan"), "per_concept": {}}]
        summary = {
            "dice": means["dice"],
            "iou": means["iou"],
            "per_concept": means["per_concept"],
            "false_positive_rate": means.get("false_positive_rate", float("nan")),
        }
        if predictions_file is not None:
            write_json([{k: v for k, v in d.items() if k != "protocol"} for d in report.detections], predictions_file)
    if dist_info.enabled:  # every rank compares the same number with its best so far
        import torch.distributed as dist

        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary
