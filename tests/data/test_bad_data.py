"""Bad entries are skipped with a warning naming them; nothing usable -> DatasetError."""

from __future__ import annotations

import logging

import pytest

from medsam3.data import CocoConceptDataset, DatasetError

LOGGER = "medsam3.data.coco"


def _build(tmp_path, spec, **kwargs):
    ann = spec.write(tmp_path / "ann.json")
    kwargs.setdefault("resolution", 28)
    kwargs.setdefault("mask_resolution", 8)
    return CocoConceptDataset(ann, tmp_path / "imgs", **kwargs)


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER)


def test_corrupt_missing_and_escaping_images_are_skipped(tmp_path, kit, caplog):
    spec = kit.standard_spec(tmp_path / "imgs")
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    truncated = (tmp_path / "imgs" / "img1.png").read_bytes()
    (tmp_path / "imgs" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (tmp_path / "outside.png").write_bytes((tmp_path / "imgs" / "img2.png").read_bytes())
    spec.images += [
        {"id": 10, "file_name": "corrupt.png", "width": kit.W, "height": kit.H},
        {"id": 11, "file_name": "truncated.png", "width": kit.W, "height": kit.H},
        {"id": 12, "file_name": "../outside.png", "width": kit.W, "height": kit.H},
        {"id": 13, "file_name": str(tmp_path / "outside.png"), "width": kit.W, "height": kit.H},
        {"id": 14, "file_name": "missing.png", "width": kit.W, "height": kit.H},
    ]
    for iid in (10, 11, 12, 13, 14):
        spec.annotations.append(
            {"id": 100 + iid, "image_id": iid, "category_id": 1, "segmentation": [kit.rect_polygon(*kit.TUMOR_A)]}
        )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _build(tmp_path, spec)
    assert sorted(ds.image_ids) == [1, 2, 3, 4]
    text = _warnings(caplog)
    assert "corrupt.png" in text and "cannot be read" in text
    assert "truncated.png" in text
    assert "'../outside.png'" in text and "leaves the image root" in text
    assert str(tmp_path / "outside.png") in text
    assert "missing.png" in text and "not found" in text
    assert "skipped 5 images" in text  # the summary line
    assert "annotation id=110" not in text  # annotations of skipped images are not reported twice


def test_bad_annotations_and_categories_are_skipped(tmp_path, kit, caplog):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.categories.append({"id": 7, "name": "  "})  # no usable name
    spec.categories.append({"id": 8})  # no name at all
    spec.annotations += [
        {"id": 201, "image_id": 2, "category_id": 1, "segmentation": [[]]},  # empty polygon
        {"id": 202, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},  # 2 points
        {"id": 203, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 10, 10, 20, 20]]},  # zero area
        {"id": 204, "image_id": 2, "category_id": 7, "segmentation": [kit.rect_polygon(0, 0, 8, 9)]},
        {"id": 205, "image_id": 2, "category_id": 99, "segmentation": [kit.rect_polygon(0, 0, 8, 9)]},
        {"id": 206, "image_id": 2, "category_id": 2, "segmentation": {"size": [10, 10], "counts": "abc"}},
        {"id": 207, "image_id": 555, "category_id": 2, "segmentation": [kit.rect_polygon(0, 0, 8, 9)]},
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _build(tmp_path, spec, num_negatives=5)
    text = _warnings(caplog)
    for aid in (201, 202, 203, 204, 205, 206, 207):
        assert f"annotation id={aid}" in text, aid
    assert "degenerate polygon" in text
    assert "category id=7: no name" in text and "category id=8: no name" in text
    assert "unknown or unnamed category id 99" in text
    assert "does not match the image size" in text
    assert "unknown image id" in text
    assert "skipped 7 annotations, 2 categories; 4 images usable" in text
    # The image keeps its valid liver; tumor and cyst had (bad) annotations there, so they are
    # present and never used as its negatives.
    queries = ds[ds.image_ids.index(2)]["queries"]
    assert [q["prompt"] for q in queries if not q["is_negative"]] == ["liver"]
    assert [q["prompt"] for q in queries if q["is_negative"]] == ["spleen"]


def test_partly_degenerate_multipolygon_keeps_the_good_part(tmp_path, kit, caplog):
    spec = kit.standard_spec(tmp_path / "imgs")
    spec.annotations[0]["segmentation"].append([3, 3, 4, 4])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _build(tmp_path, spec, num_negatives=0)
    assert "dropped 1 degenerate polygon part(s) of 2" in _warnings(caplog)
    assert ds[ds.image_ids.index(1)]["queries"][0]["boxes"].shape == (2, 4)


def test_nothing_usable_raises_actionable_error(tmp_path, kit, caplog):
    spec = kit.CocoSpec(
        images=[
            {"id": 1, "file_name": "gone.png", "width": 10, "height": 10},
            {"id": 2, "file_name": "../../etc/passwd", "width": 10, "height": 10},
        ],
        annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
        categories=[{"id": 1, "name": "tumor"}],
    )
    (tmp_path / "imgs").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(DatasetError) as err:
        _build(tmp_path, spec)
    message = str(err.value)
    assert "no usable images" in message and "image_root" in message and "2 images" in message
    assert isinstance(err.value, ValueError)


def test_unusable_json_raises(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoConceptDataset(bad, tmp_path / "imgs")
    bad.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(DatasetError, match="lists no images"):
        CocoConceptDataset(bad, tmp_path / "imgs")
    with pytest.raises(FileNotFoundError):
        CocoConceptDataset(tmp_path / "absent.json", tmp_path / "imgs")


def test_file_broken_after_construction_falls_back_to_next_image(tmp_path, kit, caplog):
    spec = kit.standard_spec(tmp_path / "imgs")
    ds = _build(tmp_path, spec)
    first = ds.image_ids[0]
    (tmp_path / "imgs" / f"img{first}.png").write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        sample = ds[0]
    assert sample["image_id"] == ds.image_ids[1]
    assert f"img{first}.png" in caplog.text
