"""CocoConceptDataset: queries, targets, negatives, pixels, collate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Sam3ImageProcessor

from medsam3.data import CocoConceptDataset, resolve_split
from medsam3.data.collate import collate

M = 20  # target mask side used in these tests: pixel (x, y) of the 80x60 image -> (x / 4, y / 3)


def _dataset(data_dir: Path, **kwargs) -> CocoConceptDataset:
    paths = resolve_split(data_dir, "train")
    kwargs.setdefault("resolution", 56)
    kwargs.setdefault("mask_resolution", M)
    return CocoConceptDataset(paths.annotation_file, paths.image_root, **kwargs)


def _rect_mask(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    out = torch.zeros(M, M, dtype=torch.bool)
    out[y0 // 3 : y1 // 3, x0 // 4 : x1 // 4] = True
    return out


def _cxcywh(x0, y0, x1, y1, w=80, h=60) -> list[float]:
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def test_positive_queries_boxes_and_masks(roboflow_dir, kit):
    ds = _dataset(roboflow_dir, num_negatives=0)
    assert ds.prompts == ["tumor", "cyst", "liver", "spleen"]  # unused super-category 0 is not a concept
    sample = ds[ds.image_ids.index(1)]
    assert sample["original_size"] == (60, 80)
    assert sample["pixel_values"].shape == (3, 56, 56) and sample["pixel_values"].dtype == torch.float32
    tumor, cyst = sample["queries"]
    assert (tumor["prompt"], tumor["category_id"], tumor["is_negative"]) == ("tumor", 1, False)
    # Both tumors are targets of the one "tumor" query; the second box is derived from its polygon.
    expected = torch.tensor([_cxcywh(*kit.TUMOR_A), _cxcywh(*kit.TUMOR_B)])
    torch.testing.assert_close(tumor["boxes"], expected)
    assert tumor["masks"].shape == (2, M, M) and tumor["masks"].dtype == torch.bool
    assert torch.equal(tumor["masks"][0], _rect_mask(*kit.TUMOR_A))
    assert torch.equal(tumor["masks"][1], _rect_mask(*kit.TUMOR_B))
    assert tumor["mask_valid"].tolist() == [True, True]
    # The cyst is an RLE annotation.
    assert cyst["prompt"] == "cyst"
    torch.testing.assert_close(cyst["boxes"], torch.tensor([_cxcywh(*kit.CYST)]))
    assert torch.equal(cyst["masks"][0], _rect_mask(*kit.CYST))


def test_negatives_count_content_and_reproducibility(roboflow_dir):
    ds = _dataset(roboflow_dir, num_negatives=2, seed=7)
    idx = ds.image_ids.index(1)  # tumor + cyst present -> negatives from {liver, spleen}
    queries = ds[idx]["queries"]
    negatives = [q for q in queries if q["is_negative"]]
    assert [q["prompt"] for q in queries if not q["is_negative"]] == ["tumor", "cyst"]
    assert sorted(q["prompt"] for q in negatives) == ["liver", "spleen"]
    for q in negatives:
        assert q["boxes"].shape == (0, 4) and q["masks"].shape == (0, M, M)
    assert "lesions-XYZ" not in {q["prompt"] for q in queries}

    def negatives_of(dataset, epoch):
        dataset.set_epoch(epoch)
        return [[q["prompt"] for q in dataset[i]["queries"] if q["is_negative"]] for i in range(len(dataset))]

    empty_idx = ds.image_ids.index(3)  # no annotations: 2 of the 4 concepts
    assert len(negatives_of(ds, 0)[empty_idx]) == 2
    again = _dataset(roboflow_dir, num_negatives=2, seed=7)
    assert negatives_of(ds, 0) == negatives_of(again, 0)  # same seed + epoch -> same draw
    per_epoch = {tuple(map(tuple, negatives_of(ds, e))) for e in range(8)}
    assert len(per_epoch) > 1  # epochs vary the draw
    other_seed = {tuple(map(tuple, negatives_of(_dataset(roboflow_dir, num_negatives=2, seed=s), 0))) for s in range(8)}
    assert len(other_seed) > 1


def test_fewer_negatives_when_not_enough_absent_concepts(roboflow_dir):
    ds = _dataset(roboflow_dir, num_negatives=10)
    counts = {iid: sum(q["is_negative"] for q in ds[i]["queries"]) for i, iid in enumerate(ds.image_ids)}
    assert counts == {1: 2, 2: 3, 3: 4, 4: 3}


def test_prompt_field_synonyms_and_crowd(tmp_path, kit):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.categories[1]["prompt"] = "liver tumour"
    spec.categories[1]["synonyms"] = ["hepatic lesion", "liver mass"]
    # A crowd cyst on image 2: cyst is present there (never a negative) but not a target.
    spec.annotations.append(
        {
            "id": 99,
            "image_id": 2,
            "category_id": 2,
            "segmentation": kit.rect_rle(60, 30, 72, 45),
            "bbox": [60, 30, 12, 15],
            "iscrowd": 1,
        }
    )
    ann = spec.write(tmp_path / "ann.json")
    ds = CocoConceptDataset(ann, tmp_path / "imgs", resolution=28, mask_resolution=M, num_negatives=10)
    img1 = ds[ds.image_ids.index(1)]["queries"]
    assert img1[0]["prompt"] == "liver tumour"
    img2 = ds[ds.image_ids.index(2)]["queries"]
    assert "cyst" not in {q["prompt"] for q in img2}

    train = CocoConceptDataset(
        ann, tmp_path / "imgs", resolution=28, mask_resolution=M, num_negatives=0, use_synonyms=True
    )
    seen = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        seen.add(train[train.image_ids.index(1)]["queries"][0]["prompt"])
    assert seen == {"liver tumour", "hepatic lesion", "liver mass"}


def test_box_only_annotation_has_invalid_mask(tmp_path, kit):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.annotations[0]["segmentation"] = []  # detection-only export
    ann = spec.write(tmp_path / "ann.json")
    ds = CocoConceptDataset(ann, tmp_path / "imgs", resolution=28, mask_resolution=M, num_negatives=0)
    tumor = ds[ds.image_ids.index(1)]["queries"][0]
    assert tumor["mask_valid"].tolist() == [False, True]
    assert not tumor["masks"][0].any()
    torch.testing.assert_close(tumor["boxes"][0], torch.tensor(_cxcywh(*kit.TUMOR_A)))


@pytest.mark.parametrize("resolution", [112, 1008])
def test_pixel_values_match_sam3_image_processor(tmp_path, resolution, kit):
    ds = _dataset_with_jpeg(tmp_path, kit, resolution)
    sample = ds[0]
    processor = Sam3ImageProcessor(size={"height": resolution, "width": resolution})
    image = Image.open(ds.image_root / sample["file_name"])
    expected = processor(images=image, return_tensors="pt").pixel_values[0]
    assert sample["pixel_values"].shape == expected.shape
    assert (sample["pixel_values"] - expected).abs().max().item() < 1e-4


def _dataset_with_jpeg(tmp_path: Path, kit, resolution: int) -> CocoConceptDataset:
    kit.draw_image(tmp_path / "imgs" / "scan.jpg", [kit.TUMOR_A], seed=5)
    spec = kit.CocoSpec(
        images=[{"id": 1, "file_name": "scan.jpg", "width": kit.W, "height": kit.H}],
        annotations=[{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [kit.rect_polygon(*kit.TUMOR_A)]}],
        categories=[{"id": 1, "name": "tumor"}],
    )
    return CocoConceptDataset(
        spec.write(tmp_path / "ann.json"), tmp_path / "imgs", resolution=resolution, mask_resolution=M
    )


def test_collate_flattens_queries(roboflow_dir):
    ds = _dataset(roboflow_dir, num_negatives=1)
    samples = [ds[0], ds[1]]
    batch = collate(samples)
    n0, n1 = len(samples[0]["queries"]), len(samples[1]["queries"])
    assert batch["pixel_values"].shape == (2, 3, 56, 56)
    assert batch["query_image_index"].tolist() == [0] * n0 + [1] * n1
    assert batch["prompts"] == [q["prompt"] for s in samples for q in s["queries"]]
    assert batch["is_negative"].tolist() == [q["is_negative"] for s in samples for q in s["queries"]]
    assert batch["image_ids"] == [samples[0]["image_id"], samples[1]["image_id"]]
    for q in batch["queries"]:
        assert q["masks"].dtype == torch.float32 and q["masks"].shape[1:] == (M, M)
        assert q["boxes"].shape == (q["masks"].shape[0], 4)
        assert q["is_negative"] == (q["boxes"].shape[0] == 0)
    with pytest.raises(ValueError):
        collate([])


def test_dataloader_with_workers(roboflow_dir):
    ds = _dataset(roboflow_dir, num_negatives=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=1)
    batches = list(loader)
    assert sum(b["pixel_values"].shape[0] for b in batches) == len(ds)


def test_semantic_targets_for_evaluation(roboflow_dir, kit):
    ds = _dataset(roboflow_dir, num_negatives=2)
    index = ds.image_ids.index(1)
    masks, absent = ds.semantic_targets(index)
    assert set(masks) == {"tumor", "cyst"}
    tumor = masks["tumor"]
    assert tumor.shape == (kit.H, kit.W) and tumor.dtype == bool
    x0, y0, x1, y1 = kit.TUMOR_A
    assert tumor[y0:y1, x0:x1].all()
    x0, y0, x1, y1 = kit.TUMOR_B
    assert tumor[y0:y1, x0:x1].all()
    assert int(tumor.sum()) == (kit.TUMOR_A[2] - kit.TUMOR_A[0]) * (kit.TUMOR_A[3] - kit.TUMOR_A[1]) + (
        kit.TUMOR_B[2] - kit.TUMOR_B[0]
    ) * (kit.TUMOR_B[3] - kit.TUMOR_B[1])
    assert sorted(absent) == ["liver", "spleen"]
    assert ds.image_path(index).name == "img1.png"
