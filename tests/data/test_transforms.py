"""One image path: the trainer's input for a stored file equals what infer_sam.py hands the Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsam3.data import CocoConceptDataset, load_rgb_image, normalize_image, resize_image
from medsam3.data.importer import ImportOptions, import_dataset
from medsam3.inference.inputs import load_input
from medsam3.inference.volume import resolve_axis

R = 56  # model input side for these checks


def _coco_one_image(folder: Path, file_name: str, height: int, width: int) -> Path:
    ann = {
        "images": [{"id": 1, "file_name": file_name, "height": height, "width": width}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]}],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps(ann))
    return path


def _trainer_input(folder: Path, file_name: str, hw: tuple[int, int]) -> torch.Tensor:
    ds = CocoConceptDataset(_coco_one_image(folder, file_name, *hw), folder, resolution=R, mask_resolution=14)
    return ds[0]["pixel_values"]


def _as_model_input(rgb: np.ndarray) -> torch.Tensor:
    return normalize_image(resize_image(Image.fromarray(rgb), R))


def test_sixteen_bit_png_trains_on_what_inference_sees(tmp_path):
    arr = np.linspace(0, 4000, 40 * 30).reshape(30, 40).astype(np.uint16)
    arr[0, 0] = 65535  # one hot pixel: min-max scaling would crush the rest, percentiles do not
    Image.fromarray(arr).save(tmp_path / "xr.png")
    infer_rgb = load_input(tmp_path / "xr.png").image.rgb
    assert np.array_equal(np.asarray(load_rgb_image(tmp_path / "xr.png")), infer_rgb)
    assert len(np.unique(infer_rgb[..., 0])) > 200  # scaled, not clipped at 255 nor crushed
    assert torch.equal(_trainer_input(tmp_path, "xr.png", (30, 40)), _as_model_input(infer_rgb))


def test_rgb_and_rgba_png_train_on_what_inference_sees(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "derm.png")
    infer_rgb = load_input(tmp_path / "derm.png").image.rgb
    assert np.array_equal(infer_rgb, rgb)  # RGB unchanged
    assert torch.equal(_trainer_input(tmp_path, "derm.png", (30, 40)), _as_model_input(rgb))
    rgba = rng.integers(0, 256, size=(30, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "overlay.png")
    assert np.array_equal(
        np.asarray(load_rgb_image(tmp_path / "overlay.png")), load_input(tmp_path / "overlay.png").image.rgb
    )


def test_dicom_listed_in_a_coco_set_is_read_like_inference(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    source = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    (tmp_path / "ct.dcm").write_bytes(source.read_bytes())
    infer_rgb = load_input(tmp_path / "ct.dcm").image.rgb
    assert torch.equal(_trainer_input(tmp_path, "ct.dcm", infer_rgb.shape[:2]), _as_model_input(infer_rgb))


def _ct_dataset(root: Path) -> Path:
    """A one-case nnU-Net CT dataset in HU with an oblique-free but flipped affine."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(24, 20, 6)).astype(np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:12, 4:9, 2:4] = 1
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])  # L->R flipped: display orientation matters
    nib.save(nib.Nifti1Image(hu, affine), root / "imagesTr" / "CT_001_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / "CT_001.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_imported_ct_slice_trains_on_what_inference_shows(tmp_path):
    src = _ct_dataset(tmp_path / "Dataset900_CT")
    import_dataset(src, tmp_path / "out", ImportOptions(valid_fraction=0, test_fraction=0, progress=False))
    split = tmp_path / "out" / "train"
    records = json.loads((split / "_annotations.coco.json").read_text())["images"]
    volume = load_input(src / "imagesTr" / "CT_001_0000.nii.gz").volume  # infer_sam.py's reader
    axis = resolve_axis(volume, "auto")
    assert "CT window" in volume.intensity_description
    ds = CocoConceptDataset(split / "_annotations.coco.json", split, resolution=R, mask_resolution=14)
    assert len(ds) == len(records) >= 2
    for index, record in enumerate(records):
        infer_rgb = volume.slice_rgb(record["slice_index"], axis)  # what segment_volume gives the Predictor
        assert np.array_equal(np.asarray(load_rgb_image(split / record["file_name"])), infer_rgb)
        assert torch.equal(ds[index]["pixel_values"], _as_model_input(infer_rgb))
