"""A real clinical CT series: TotalSegmentator 2.18.0's tests/reference_files (sdist).

``example_ct_dicom`` is a 20-slice JPEG 2000 lossless CT series; TotalSegmentator's
own ``example_seg_dicom.nii.gz`` was produced from it by a DICOM->NIfTI converter,
so our volume must describe the same voxel grid in world space.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless

from medsam3.io import load_volume, save_label_map

# The fixture downloads the 38 MB sdist on first use (then pytest's cache keeps it): opt-in.
pytestmark = pytest.mark.network


def test_series_geometry_matches_reference_nifti(totalseg_reference, need_decoder, tmp_path):
    need_decoder(JPEG2000Lossless)
    folder = totalseg_reference / "example_ct_dicom"
    vol = load_volume(folder)
    assert vol.shape == (512, 512, 20)
    assert vol.modality == "CT" and vol.meta["sorted_by"] == "ImagePositionPatient"
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))

    # Same grid as the converter's NIfTI (which flips rows): compare in canonical RAS order.
    ref = nib.load(totalseg_reference / "example_seg_dicom.nii.gz")
    ours = nib.as_closest_canonical(nib.Nifti1Image(np.zeros(vol.shape, np.uint8), vol.affine))
    theirs = nib.as_closest_canonical(ref)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)

    # HU of each slice == pydicom's own modality LUT, slices in position order.
    files = sorted(folder.iterdir())
    by_z = sorted((float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), f) for f in files)
    for k in (0, 19):
        ds = pydicom.dcmread(by_z[k][1])
        np.testing.assert_array_equal(vol.data[:, :, k], apply_modality_lut(ds.pixel_array, ds).T)
    assert vol.data.min() >= -2048 and vol.data.max() > 1000  # HU range

    # The reference segmentation, mapped into our voxel order, writes back aligned.
    ref_in_ours = nib.orientations.apply_orientation(
        np.asanyarray(ref.dataobj),
        nib.orientations.ornt_transform(nib.io_orientation(ref.affine), nib.io_orientation(vol.affine)),
    )
    assert ref_in_ours.shape == vol.shape and ref_in_ours.max() > 0
    out = nib.load(save_label_map(ref_in_ours, vol, tmp_path / "seg.nii.gz"))
    resampled_back = nib.as_closest_canonical(out)
    np.testing.assert_array_equal(np.asanyarray(resampled_back.dataobj), np.asanyarray(theirs.dataobj))


def test_ct_and_mr_nifti_get_the_right_intensity_choice(totalseg_reference):
    ct = load_volume(totalseg_reference / "example_ct_sm.nii.gz")
    mr = load_volume(totalseg_reference / "example_mr_sm.nii.gz")
    assert ct.modality == "CT" and ct.intensity.description.startswith("CT window soft_tissue (L40 W400)")
    assert mr.modality is None and mr.intensity.kind == "percentile"
    rgb = next(iter(ct.slices_rgb()))
    assert rgb.dtype == np.uint8 and rgb.shape == (ct.shape[1], ct.shape[0], 3)
