"""read_coco: the one reader's rules that training and evaluation share (merged prompts, crowd, sizes, ids)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medsam3.data import CocoConceptDataset
from medsam3.data.coco_records import read_coco
from medsam3.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _box(kit, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((kit.H, kit.W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_categories_sharing_a_prompt_are_one_concept_everywhere(tmp_path, kit):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.categories.append({"id": 7, "name": "Tumor "})  # the same prompt as category 1 ("tumor")
    spec.annotations[1]["category_id"] = 7  # img1's second tumour now belongs to category 7
    ann = spec.write(tmp_path / "ann.json")

    records = read_coco(ann, tmp_path / "imgs")
    assert records.prompts == ["tumor", "cyst", "liver", "spleen"]
    assert {a["category_id"] for a in records.coco.dataset["annotations"]} == {1, 2, 3, 4}  # relabelled to 1
    img1 = records.images[0]
    masks = records.semantic_masks(img1)
    np.testing.assert_array_equal(masks["tumor"], _box(kit, *kit.TUMOR_A) | _box(kit, *kit.TUMOR_B))

    # training: one query for the concept, with both instances as targets
    ds = CocoConceptDataset(ann, tmp_path / "imgs", resolution=28, mask_resolution=20, num_negatives=0)
    queries = ds[ds.image_ids.index(1)]["queries"]
    assert [q["prompt"] for q in queries] == ["tumor", "cyst"]
    assert queries[0]["boxes"].shape == (2, 4)


def test_crowd_is_ground_truth_for_dice_but_not_a_training_target(tmp_path, kit):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.annotations.append(
        {"id": 0, "image_id": 2, "category_id": 2, "segmentation": kit.rect_rle(60, 30, 72, 45), "iscrowd": 1}
    )
    ann = spec.write(tmp_path / "ann.json")
    records = read_coco(ann, tmp_path / "imgs")
    img2 = records.images[1]
    np.testing.assert_array_equal(records.semantic_masks(img2)["cyst"], _box(kit, 60, 30, 72, 45))
    assert "cyst" not in records.absent_prompts(img2)
    crowd = [a for a in records.coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["id"] >= 1  # id 0 renumbered: COCOeval needs positive ids
    ids = [a["id"] for a in records.coco.dataset["annotations"]]
    assert len(ids) == len(set(ids))

    ds = CocoConceptDataset(ann, tmp_path / "imgs", resolution=28, mask_resolution=20, num_negatives=10)
    assert "cyst" not in {q["prompt"] for q in ds[ds.image_ids.index(2)]["queries"]}


def test_an_image_whose_size_differs_from_its_entry_is_skipped(tmp_path, kit, caplog):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.images[1]["width"] = kit.W * 2  # img2 is 80 px wide on disk
    ann = spec.write(tmp_path / "ann.json")
    with caplog.at_level(logging.WARNING, logger="medsam3.data.coco"):
        records = read_coco(ann, tmp_path / "imgs")
    assert [r.image_id for r in records.images] == [1, 3, 4]
    assert [name for name, _, _ in records.rejected] == ["img2.png"]
    assert "is 80x60 pixels on disk but 160x60 in the annotations" in caplog.text
    # without verification (evaluation reads each image itself), the entry's size is trusted
    assert [r.image_id for r in read_coco(ann, tmp_path / "imgs", verify_images=False).images] == [1, 2, 3, 4]


def test_missing_file_is_a_user_error_that_is_also_file_not_found(tmp_path):
    with pytest.raises(UserError, match="not found") as err:
        read_coco(tmp_path / "absent.json", tmp_path)
    assert isinstance(err.value, FileNotFoundError)
