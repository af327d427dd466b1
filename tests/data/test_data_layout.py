"""resolve_split: Roboflow and plain COCO layouts."""

from __future__ import annotations

import shutil

import pytest

from medsam3.data import CocoConceptDataset, resolve_split


def test_roboflow_layout(roboflow_dir):
    paths = resolve_split(roboflow_dir, "train")
    assert paths.layout == "roboflow"
    assert paths.annotation_file == roboflow_dir / "train" / "_annotations.coco.json"
    assert paths.image_root == roboflow_dir / "train"
    # A split folder itself is accepted too.
    assert resolve_split(roboflow_dir / "train").annotation_file == paths.annotation_file
    # Roboflow's "valid" is found when asked for "val".
    shutil.copytree(roboflow_dir / "train", roboflow_dir / "valid")
    assert resolve_split(roboflow_dir, "val").image_root == roboflow_dir / "valid"


def test_plain_coco_layouts(tmp_path, kit):
    data_dir = tmp_path / "coco"
    spec = kit.standard_spec(data_dir / "val2017")
    ann = spec.write(data_dir / "annotations" / "instances_val2017.json")

    found = resolve_split(data_dir, "val")
    assert (found.layout, found.annotation_file, found.image_root) == ("coco", ann, data_dir / "val2017")

    explicit = resolve_split(annotation_file=ann, image_root=data_dir / "val2017")
    assert explicit.annotation_file == ann and explicit.image_root == data_dir / "val2017"

    ds = CocoConceptDataset(found.annotation_file, found.image_root, resolution=28, mask_resolution=8)
    assert len(ds) == 4


def test_missing_split_lists_what_was_tried(roboflow_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="_annotations.coco.json") as err:
        resolve_split(roboflow_dir, "test")
    assert "instances_test.json" in str(err.value)
    with pytest.raises(FileNotFoundError):
        resolve_split(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError):
        resolve_split(annotation_file=tmp_path / "missing.json")
    with pytest.raises(ValueError):
        resolve_split()


def test_from_split_and_indexing(roboflow_dir):
    ds = CocoConceptDataset.from_split(roboflow_dir, "train", resolution=28, mask_resolution=8)
    assert len(ds) == 4
    assert ds[-1]["image_id"] == ds.image_ids[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert len(list(iter(ds))) == len(ds)  # the legacy iteration protocol stops


@pytest.mark.parametrize(
    "name, escapes",
    [
        ("a.png", False),
        ("sub/dir/a.png", False),
        ("sub/../a.png", False),
        ("../a.png", True),
        ("sub/../../a.png", True),
        ("/etc/passwd", True),
        ("..\\a.png", True),
        ("C:\\x\\a.png", True),
        ("c:/a.png", True),
        ("a:b.png", False),
    ],
)
def test_path_escape_check(name, escapes):
    from medsam3.data.coco_records import escapes_root

    assert escapes_root(name) is escapes
