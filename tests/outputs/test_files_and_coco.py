"""Atomic writes and COCO results entries (medsam3.outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from medsam3.inference.postprocess import Detections
from medsam3.outputs import atomic_path, coco_results, results_to_json, write_json


def test_atomic_path_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = write_json({"v": 1}, tmp_path / "sub" / "a.json")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"], "no temporary file left behind"
    with atomic_path(tmp_path / "x.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path  # same folder: os.replace is atomic
        tmp.write_bytes(b"data")
    assert (tmp_path / "x.nii.gz").read_bytes() == b"data" and not tmp.exists()


def test_coco_results_boxes_and_areas_from_the_masks():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:22] = True
    other = np.zeros((20, 30), bool)
    other[0, 0] = True
    dets = [
        Detections(
            "liver",
            np.array([[0, 0, 30, 20], [0, 0, 1, 1]], np.float32),
            np.array([0.9, 0.4], np.float32),
            np.stack([mask, other]),
        ),
        Detections("tumor", np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 20, 30), bool)),
    ]
    record = json.loads(json.dumps(results_to_json(dets, "a.png", (20, 30))))
    entries = coco_results(record, image_id=7, category_ids={"liver": 1, "tumor": 2})
    assert [(e["image_id"], e["category_id"], e["area"]) for e in entries] == [(7, 1, 48), (7, 1, 1)]
    assert entries[0]["bbox"] == [10.0, 5.0, 12.0, 4.0] and entries[0]["score"] == pytest.approx(0.9)
    seg = entries[0]["segmentation"]
    decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
