"""COCO files the fuzzer broke the reader with: each bad entry is skipped with its reason (or the file
is refused with a DatasetError); none may crash pycocotools or escape as a TypeError/ValueError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam3.data import CocoConceptDataset, DatasetError

REPO = Path(__file__).resolve().parents[2]


def _dataset(tmp_path: Path, annotations: list, images: list | None = None) -> Path:
    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(tmp_path / "img0.png")
    coco = {
        "images": images or [{"id": 1, "file_name": "img0.png", "height": 32, "width": 40}],
        "categories": [{"id": 1, "name": "liver"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 8],
             "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]]},
            *annotations,
        ],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json"


def _build(ann: Path):
    ds = CocoConceptDataset(ann, ann.parent, resolution=28, mask_resolution=8)
    return ds, [ds[k] for k in range(len(ds))]


def test_polygon_far_outside_the_image_does_not_crash_pycocotools(tmp_path):
    """A coordinate of 1e30 made pycocotools' C rasteriser overflow and segfault (the fuzzer's worker
    died with SIGSEGV); run in a child process so a regression fails the test instead of killing it."""
    ann = _dataset(
        tmp_path, [{"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[4, 4, 14, 1e30, 14, 12, 4, 12]]}]
    )
    code = f"""
import logging; logging.disable(logging.CRITICAL)
from medsam3.data import CocoConceptDataset
ds = CocoConceptDataset({str(ann)!r}, {str(tmp_path)!r}, resolution=28, mask_resolution=8)
print(len(ds), int(ds[0]["queries"][0]["masks"].sum()) >= 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.split() == ["1", "True"]


@pytest.mark.parametrize(
    "bad",
    [
        {"image_id": [1], "category_id": 1, "bbox": [1, 1, 4, 4]},  # unhashable id: was a TypeError
        {"image_id": 1, "category_id": {"a": None}, "bbox": [1, 1, 4, 4]},
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [32, 40], "counts": [-5, 10]}},
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [32, 40], "counts": [330, 6]}},  # sum != 32*40
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [32, 40], "counts": "\x01\x02garbage"}},
        {"image_id": 1, "category_id": 1, "segmentation": {"size": [32, 40], "counts": 12}},
    ],
    ids=["list_image_id", "dict_category", "negative_rle", "short_rle", "bad_rle_string", "int_counts"],
)
def test_bad_annotations_are_skipped(tmp_path, bad):
    ds, samples = _build(_dataset(tmp_path, [{"id": 2, **bad}]))
    assert len(ds) == 1 and len(samples) == 1
    assert len(ds.coco.anns) == 1  # only the good one


def test_implausible_image_sizes_and_file_names(tmp_path):
    images = [
        {"id": 1, "file_name": "img0.png", "height": 32, "width": 40},
        {"id": 2, "file_name": "img0.png", "height": 10**9, "width": 10**9},  # masks would be decoded at this size
        {"id": 3, "file_name": "x" * 5000, "height": 32, "width": 40},  # was OSError: file name too long
        {"id": 4, "file_name": "a\x00b.png", "height": 32, "width": 40},
    ]
    ds, _ = _build(_dataset(tmp_path, [], images))
    assert ds.image_ids == [1]


def test_nothing_usable_is_a_dataset_error(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_bytes(b'{"images": [{"id": 1, "file_name": "\xff\xfe"}]')
    with pytest.raises(DatasetError):
        CocoConceptDataset(ann, tmp_path, resolution=28, mask_resolution=8)
