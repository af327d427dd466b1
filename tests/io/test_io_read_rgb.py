"""read_rgb: the one call the Predictor and CLI make for any 2D input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from medsam3.io import ImageReadError, apply_window, load_image2d, read_rgb


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)
    assert arr.flags.c_contiguous


def test_rgb_png_passes_through_unchanged(tmp_path, rgb_image):
    path = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(path)
    out = read_rgb(path)
    _check_rgb(out, rgb_image.shape[:2])
    np.testing.assert_array_equal(out, rgb_image)


def test_gray_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    out = read_rgb(str(path))  # str paths work too
    _check_rgb(out, gray.shape)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_ct_dicom_gets_soft_tissue_window_and_logs_it(dicom_file, caplog):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    with caplog.at_level(logging.INFO, logger="medsam3.io"):
        out = read_rgb(path)
    _check_rgb(out, hu.shape)
    np.testing.assert_array_equal(out[..., 0], apply_window(hu, 40, 400))
    assert "CT window soft_tissue (L40 W400)" in caplog.text
    assert str(path) in caplog.text


def test_window_override_preset_and_tuple(dicom_file):
    path = dicom_file("CT_small.dcm")
    lung = load_image2d(path, window="lung")
    custom = load_image2d(path, window=(50, 350))
    assert lung.intensity == "CT window lung (L-600 W1500)"
    assert custom.intensity == "CT window custom (L50 W350)"
    np.testing.assert_array_equal(lung.rgb[..., 0], apply_window(lung.raw, -600, 1500))
    assert not np.array_equal(lung.rgb, custom.rgb)


def test_bad_window_fails_before_reading(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        read_rgb(tmp_path / "does_not_matter.png", window="lungs-ish")


def test_missing_file_raises_specific_error(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png"):
        read_rgb(missing)
