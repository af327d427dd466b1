"""Detections a reader can trust: no empty masks, no two detections of one mask (box NMS, then mask NMS)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam3.adapters.plan import plan_run
from medsam3.config import load_config
from medsam3.inference.postprocess import distinct_masks, postprocess_query_outputs
from medsam3.inference.predictor import Predictor
from medsam3.io import load_image2d, load_volume

EXAMPLES = Path(__file__).resolve().parents[2] / "medsam3" / "demo" / "examples"
CONCEPTS = json.loads((EXAMPLES / "labels.json").read_text())["labels"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def test_distinct_masks_drops_empty_and_duplicate_masks_best_first():
    masks = torch.zeros(5, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # best
    masks[1, :4, :4] = True  # the same mask again: a duplicate
    masks[1, 4, 0] = True
    masks[2] = False  # empty
    masks[3, 4:, 4:] = True  # another object
    masks[4, :4, :3] = True  # IoU 12/16 = 0.75 with the best
    assert distinct_masks(masks, 0.5).tolist() == [0, 3]
    assert distinct_masks(masks, 0.8).tolist() == [0, 3, 4]
    assert distinct_masks(masks, None).tolist() == [0, 1, 3, 4]  # NMS off: only the empty one goes


def test_loose_boxes_around_one_mask_are_one_detection():
    """Box NMS keeps two queries whose boxes differ a lot; their masks are the same: one detection."""
    logits = torch.full((3, 16, 16), -5.0)
    logits[0, 2:10, 2:10] = 5.0
    logits[1, 2:10, 2:10] = 5.0
    scores = torch.tensor([0.9, 0.8, 0.7])
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.6], [0.0, 0.0, 1.0, 1.0], [0.7, 0.7, 0.9, 0.9]])
    det = postprocess_query_outputs("liver", scores, boxes, logits, (32, 32), threshold=0.5, nms_iou=0.5)
    assert det.scores.tolist() == pytest.approx([0.9])  # the duplicate and the empty mask are gone
    assert det.masks.shape == (1, 32, 32) and det.masks[0].any()


@pytest.fixture(scope="module")
def demo_predictor() -> Predictor:
    return Predictor.from_plan(plan_run(load_config(None), "demo", device="cpu", check_hub=False))


def test_demo_examples_have_no_duplicate_or_empty_detections(demo_predictor):
    images = [load_image2d(EXAMPLES / "ct_dicom_slice.dcm").rgb]
    volume = load_volume(EXAMPLES / "ct_abdomen_slab.nii.gz")
    images += [volume.slice_rgb(k, 2) for k in range(volume.shape[2])]
    checked = 0
    for per_image in demo_predictor.predict_images(images, CONCEPTS):  # the demo's recorded threshold
        for det in per_image:
            assert all(mask.any() for mask in det.masks), f"{det.prompt}: an empty mask"
            for a, b in combinations(det.masks, 2):
                assert _iou(a, b) <= 0.9, f"{det.prompt}: two detections of one mask"
            checked += len(det)
    assert checked >= len(images)  # the demo finds things on its own examples: the check is not vacuous
