"""Every unreadable input raises ImageReadError (or a subclass) naming the path, the problem and the fix."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from medsam3.io import (
    ImageNotFoundError,
    ImageReadError,
    UnsupportedFormatError,
    detect_format,
    is_volume_path,
    load_image2d,
    load_volume,
    read_rgb,
)

RANDOM = np.random.default_rng(42).integers(0, 256, size=4096, dtype=np.uint8).tobytes()


def test_missing_file(tmp_path):
    path = tmp_path / "scan.png"
    with pytest.raises(ImageNotFoundError) as info:
        read_rgb(path)
    err = info.value
    assert isinstance(err, ImageReadError) and isinstance(err, FileNotFoundError) and isinstance(err, ValueError)
    assert str(path) in str(err) and "no such file" in str(err) and "Fix:" in str(err)
    assert err.path == str(path)
    with pytest.raises(ImageNotFoundError, match="does not exist either"):
        load_volume(tmp_path / "missing_dir" / "ct.nii.gz")


@pytest.mark.parametrize(
    ("name", "loader", "what"),
    [
        ("bad.png", read_rgb, "PNG"),
        ("bad.jpg", read_rgb, "JPEG"),
        ("bad.tif", read_rgb, "TIFF"),
        ("bad.dcm", read_rgb, "DICOM"),
        ("bad.nii.gz", load_volume, "NIfTI"),
        ("bad.nii", load_volume, "NIfTI"),
    ],
)
def test_random_bytes_are_reported_as_corrupt(tmp_path, name, loader, what):
    path = tmp_path / name
    path.write_bytes(RANDOM)
    with pytest.raises(ImageReadError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message and what in message and "Fix:" in message
    assert not isinstance(info.value, UnsupportedFormatError)
    assert info.value.__cause__ is not None  # the library's own error is chained


def test_truncated_png_and_gzip(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_rgb(cut)
    nii = tmp_path / "cut.nii.gz"
    nii.write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(ImageReadError, match="cut.nii.gz"):
        load_volume(nii)


@pytest.mark.parametrize("name", ["scan.xyz", "scan.mgz", "noextension"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(RANDOM)
    with pytest.raises(UnsupportedFormatError) as info:
        read_rgb(path)
    message = str(info.value)
    assert str(path) in message and ".png" in message  # lists what is supported
    if name.endswith(".mgz"):
        assert "FreeSurfer" in message and "NIfTI" in message
    assert not is_volume_path(path)


def test_content_sniffing_without_extension(tmp_path, dicom_file):
    png = tmp_path / "IMG0001"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
    assert detect_format(png) == "png"
    dcm = tmp_path / "IM0001"
    dcm.write_bytes(dicom_file("CT_small.dcm").read_bytes())
    assert detect_format(dcm) == "dicom"
    assert read_rgb(dcm).shape == (128, 128, 3)


def test_wrong_loader_for_the_input(tmp_path, dicom_file):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    with pytest.raises(ImageReadError, match="read_rgb"):
        load_volume(png)
    with pytest.raises(ImageReadError, match="load_volume"):
        load_image2d(tmp_path)  # a folder is a DICOM series
    with pytest.raises(ImageReadError, match="volume_index"):
        load_volume(dicom_file("CT_small.dcm"), volume_index=2)


def test_is_volume_path(tmp_path, nibabel_data, dicom_file):
    assert is_volume_path(nibabel_data / "anatomical.nii")
    assert is_volume_path(tmp_path)  # folders are DICOM series
    assert not is_volume_path(tmp_path / "missing.nii.gz")
    assert not is_volume_path(dicom_file("CT_small.dcm"))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(RANDOM)
    assert not is_volume_path(bad)  # read_rgb then explains what is wrong
