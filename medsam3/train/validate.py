"""Validation: loss on the valid split and Dice/IoU per concept through the ``Predictor`` code path.

Each rank evaluates a strided shard of the validation images; sums are all-reduced, so every rank
ends with the same numbers. Dice/IoU are computed per (image, concept present in it) on the union
of the detections above ``threshold`` (``Detections.semantic_mask``) against the union of the
ground-truth instances at the annotation size, then averaged per concept and over concepts.
Absent concepts (the dataset's negatives for that image) are prompted too: ``false_positive_rate``
is the fraction of them with any detection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.coco import CocoConceptDataset
from ..data.collate import collate  # the module, not the lazy package (whose `collate` may be the submodule)
from ..data.transforms import load_rgb_image
from ..evaluation.metrics import dice, iou
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
    device: torch.device,
    dist_info: DistInfo,
    threshold: float = 0.5,
    predictions_file: Path | None = None,
) -> dict[str, Any]:
    """Mean Dice/IoU per concept (and over concepts) and the false-positive rate on absent concepts."""
    prompts = dataset.prompts
    slot = {p: i for i, p in enumerate(prompts)}
    # per concept: dice sum, iou sum, count; then absent prompts, absent with a detection
    sums = torch.zeros(len(prompts) * 3 + 2, dtype=torch.float64)
    records: list[dict[str, Any]] = []
    for index in range(dist_info.rank, len(dataset), dist_info.world_size):
        masks, absent = dataset.semantic_targets(index)
        asked = list(masks) + absent
        if not asked:
            continue
        image = np.array(load_rgb_image(dataset.image_path(index)))
        predictor.set_image(image)
        results = predictor.predict(asked, threshold=threshold)
        for prompt, det in zip(asked, results):
            pred = det.semantic_mask()
            if prompt in masks:
                gt = masks[prompt]
                if pred.shape != gt.shape:  # image on disk differs from the annotation frame (warned at load)
                    pred = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
                k = slot[prompt]
                sums[3 * k] += dice(pred, gt)
                sums[3 * k + 1] += iou(pred, gt)
                sums[3 * k + 2] += 1
            else:
                sums[-2] += 1
                sums[-1] += float(len(det) > 0)
            if predictions_file is not None:
                records.append(
                    {
                        "image": str(dataset.image_path(index)),
                        "prompt": prompt,
                        "scores": det.scores.tolist(),
                        "boxes_xyxy": det.boxes.tolist(),
                    }
                )
    sums = all_reduce_sum(sums.to(device)).cpu()
    per_concept = {}
    for p, k in slot.items():
        n = float(sums[3 * k + 2])
        if n:
            per_concept[p] = {"dice": float(sums[3 * k]) / n, "iou": float(sums[3 * k + 1]) / n, "images": int(n)}
    out: dict[str, Any] = {
        "dice": float(np.mean([v["dice"] for v in per_concept.values()])) if per_concept else float("nan"),
        "iou": float(np.mean([v["iou"] for v in per_concept.values()])) if per_concept else float("nan"),
        "per_concept": per_concept,
        "false_positive_rate": float(sums[-1] / sums[-2]) if float(sums[-2]) else float("nan"),
    }
    if predictions_file is not None:
        if dist_info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * dist_info.world_size
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if dist_info.is_main:
            write_json(records, predictions_file)
    return out
