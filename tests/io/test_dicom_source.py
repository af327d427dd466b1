"""The source a DICOM SEG / RTSTRUCT references: one geometry, UIDs present, frames in slice order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

import medsam3
from medsam3.io import load_volume
from medsam3.io.dicom_source import DicomSourceError, read_dicom_source

DEMO_SLICE = Path(medsam3.__file__).parent / "demo" / "examples" / "ct_dicom_slice.dcm"


def test_series_frames_follow_the_volume_slices(ct_series):
    folder, hu, positions = ct_series()
    source = read_dicom_source(folder)
    volume = load_volume(folder)
    assert len(source.frames) == 8 and not source.multiframe
    assert (source.rows, source.columns) == (32, 24) and source.pixel_spacing == (0.7, 0.9)
    for k, frame in enumerate(source.frames):  # sorted by position, not by file name or InstanceNumber
        np.testing.assert_allclose(frame.position, positions[k], atol=1e-5)
        ds = source.datasets[frame.dataset_index]
        assert ds.SOPInstanceUID == frame.sop_instance_uid
    frames = source.label_frames(volume.data > 0, volume.affine)
    np.testing.assert_array_equal(frames, hu > 0)  # slice k of the volume = frame k, rows x columns


def test_multiframe_frames_in_slice_order(enhanced_ct):
    path, hu, positions = enhanced_ct()
    source = read_dicom_source(path)
    assert source.multiframe and len(source.datasets) == 1
    assert sorted(f.frame_number for f in source.frames) == list(range(1, 9))
    for k, frame in enumerate(source.frames):
        np.testing.assert_allclose(frame.position, positions[k], atol=1e-4)
    volume = load_volume(path)
    np.testing.assert_array_equal(source.label_frames(volume.data > 0, volume.affine), hu > 0)


def test_label_map_of_another_volume_is_refused(ct_series):
    folder, _, _ = ct_series()
    source = read_dicom_source(folder)
    with pytest.raises(DicomSourceError, match="does not match"):
        source.label_frames(np.zeros((32, 24, 8), np.uint8))  # (rows, columns, slices): transposed
    affine = load_volume(folder).affine.copy()
    affine[:3, 3] += 5.0
    with pytest.raises(DicomSourceError, match="affine"):
        source.label_frames(np.zeros((24, 32, 8), np.uint8), affine)


@pytest.mark.parametrize(
    ("tweak", "needle"),
    [
        (lambda k, ds: setattr(ds, "PixelSpacing", [0.8, 0.9]) if k == 3 else None, "pixel spacing"),
        (
            lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]) if k == 2 else None,
            "orientation",
        ),
        (lambda k, ds: setattr(ds, "FrameOfReferenceUID", pydicom.uid.generate_uid()) if k == 5 else None, "Frame"),
    ],
)
def test_slices_that_do_not_share_geometry_are_refused(ct_series, tweak, needle):
    folder, _, _ = ct_series(tweak=tweak)
    with pytest.raises(DicomSourceError, match=needle):
        read_dicom_source(folder)


def test_non_image_dicom_is_refused(tmp_path):
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomSourceError, match="without an image"):
        read_dicom_source(path)


def test_anonymised_image_without_uids_is_refused_by_name():
    """The shipped demo slice had its Study/Series/SOP Instance UIDs emptied: nothing to reference."""
    with pytest.raises(DicomSourceError) as info:
        read_dicom_source(DEMO_SLICE)
    assert "StudyInstanceUID" in str(info.value) and "SOPInstanceUID" in str(info.value)
