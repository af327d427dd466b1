"""NIfTI volumes, slice reorientation and its inverse, aligned label-map writing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsam3.io import (
    ImageReadError,
    Volume,
    is_volume_path,
    load_volume,
    read_rgb,
    save_label_map,
    save_volume,
    slice_geometry,
)


def test_anatomical_nii(nibabel_data):
    path = nibabel_data / "anatomical.nii"
    ref = nib.load(path)
    vol = load_volume(path)
    assert is_volume_path(path)
    assert vol.shape == ref.shape and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.spacing == (2.0, 2.0, 2.0)
    assert vol.modality is None and vol.intensity.kind == "percentile"  # MR: not mistaken for CT
    slices = list(vol.slices_rgb())
    assert len(slices) == 25 and slices[0].shape == (41, 33, 3) and slices[0].dtype == np.uint8
    with pytest.raises(ImageReadError, match="load_volume"):
        read_rgb(path)


def test_4d_nifti_needs_a_valid_index(nibabel_data):
    path = nibabel_data / "example4d.nii.gz"
    ref = nib.load(path)
    with pytest.raises(ImageReadError, match=r"4D NIfTI with 2 volumes") as info:
        load_volume(path)
    assert "volume_index=0..1" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ImageReadError, match="out of range"):
        load_volume(path, volume_index=2)
    vol = load_volume(path, volume_index=1)
    assert vol.shape == ref.shape[:3] and vol.meta["volume_index"] == 1
    np.testing.assert_array_equal(vol.data, ref.get_fdata(dtype=np.float32)[..., 1])
    np.testing.assert_array_equal(vol.affine, ref.affine)
    with pytest.raises(ImageReadError, match="volume index"):
        load_volume(nibabel_data / "anatomical.nii", volume_index=1)


def test_label_map_for_4d_reference_is_3d_and_aligned(nibabel_data, tmp_path):
    vol = load_volume(nibabel_data / "example4d.nii.gz", volume_index=0)
    labels = np.zeros(vol.shape, dtype=np.uint8)
    labels[10, 20, 5] = 3
    out = nib.load(save_label_map(labels, vol, tmp_path / "lab.nii.gz"))
    ref = nib.load(nibabel_data / "example4d.nii.gz")
    assert out.shape == ref.shape[:3]
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header.get_zooms() == ref.header.get_zooms()[:3]
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), labels)


def _synthetic_nifti(path, qform_code=1, sform_code=2):
    """Oblique, anisotropic, non-zero origin: every way an affine can be mishandled."""
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-80.5, 12.25, 33.0]
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 1500, size=(13, 11, 7)).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    img.to_filename(path)
    return nib.load(path)


def test_label_map_round_trip_keeps_geometry(tmp_path):
    ref = _synthetic_nifti(tmp_path / "ref.nii.gz")
    vol = load_volume(tmp_path / "ref.nii.gz")
    labels = np.zeros(vol.shape, dtype=np.uint8)
    known = {(0, 0, 0): 1, (12, 10, 6): 2, (5, 3, 4): 7, (1, 9, 2): 255}
    for ijk, value in known.items():
        labels[ijk] = value
    written = save_label_map(labels, vol, tmp_path / "out" / "labels.nii.gz")
    out = nib.load(written)
    data = np.asanyarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8 and data.dtype == np.uint8
    np.testing.assert_array_equal(data, labels)
    for ijk, value in known.items():
        assert data[ijk] == value
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header.get_zooms() == ref.header.get_zooms()
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform())
    np.testing.assert_allclose(out.header.get_sform(), ref.header.get_sform())
    # The same from a path or a nibabel image as reference.
    for reference in (tmp_path / "ref.nii.gz", ref):
        again = nib.load(save_label_map(labels, reference, tmp_path / "again.nii"))
        np.testing.assert_array_equal(np.asanyarray(again.dataobj), labels)


def test_label_map_dtype_and_validation(tmp_path):
    _synthetic_nifti(tmp_path / "ref.nii.gz")
    vol = load_volume(tmp_path / "ref.nii.gz")
    big = np.zeros(vol.shape, dtype=np.int32)
    big[1, 1, 1] = 300
    out = nib.load(save_label_map(big, vol, tmp_path / "big.nii.gz"))
    assert out.get_data_dtype() == np.uint16 and np.asanyarray(out.dataobj)[1, 1, 1] == 300
    assert nib.load(save_label_map(big > 0, vol, tmp_path / "mask.nii.gz")).get_data_dtype() == np.uint8
    with pytest.raises(ValueError, match="shape"):
        save_label_map(np.zeros((2, 2, 2), np.uint8), vol, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=">= 0"):
        save_label_map(-big, vol, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="uint8"):
        save_label_map(big, vol, tmp_path / "x.nii.gz", dtype=np.uint8)
    with pytest.raises(ValueError, match=".nii"):
        save_label_map(big, vol, tmp_path / "x.png")


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slices_and_labels_from_slices_are_inverse(tmp_path, axis):
    _synthetic_nifti(tmp_path / "ref.nii.gz")
    vol = load_volume(tmp_path / "ref.nii.gz")
    labels = (np.arange(np.prod(vol.shape)).reshape(vol.shape) % 5).astype(np.uint8)
    geo = vol.slice_geometry(axis)
    per_slice = [geo.to_display(np.take(labels, k, axis=geo.axis)) for k in range(vol.num_slices(axis))]
    rgbs = list(vol.slices_rgb(axis))
    assert [r.shape[:2] for r in rgbs] == [p.shape for p in per_slice]
    np.testing.assert_array_equal(vol.labels_from_slices(per_slice, axis), labels)
    np.testing.assert_array_equal(vol.labels_from_slices(np.stack(per_slice), axis), labels)
    sparse = vol.labels_from_slices({1: per_slice[1]}, axis)
    assert sparse.sum() == np.take(labels, 1, axis=geo.axis).sum()
    raw = [
        vol.labels_from_slices(
            [np.take(labels, k, axis=geo.axis) for k in range(vol.num_slices(axis))], axis, reorient=False
        )
    ]
    np.testing.assert_array_equal(raw[0], labels)


def test_labels_from_slices_validates(tmp_path):
    _synthetic_nifti(tmp_path / "ref.nii.gz")
    vol = load_volume(tmp_path / "ref.nii.gz")
    shape = vol.slice_geometry().display_shape
    with pytest.raises(ValueError, match="slice maps"):
        vol.labels_from_slices([np.zeros(shape, np.uint8)] * 3)
    with pytest.raises(ValueError, match="display shape"):
        vol.labels_from_slices({0: np.zeros((shape[0] + 1, shape[1]), np.uint8)})


def test_display_is_the_same_whatever_the_voxel_order(make_ct_series, tmp_path):
    """A DICOM series, its NIfTI export and a canonical (RAS) re-ordering of it all
    give identical model inputs, and labels map back to the right voxels."""
    folder, hus, _ = make_ct_series(n=5)
    dicom_vol = load_volume(folder)
    nifti_path = save_volume(dicom_vol, tmp_path / "ct.nii.gz")
    canonical = nib.as_closest_canonical(nib.load(nifti_path))
    assert canonical.shape != dicom_vol.shape or not np.allclose(canonical.affine, dicom_vol.affine)
    canonical.to_filename(tmp_path / "ct_ras.nii.gz")
    for path in (nifti_path, tmp_path / "ct_ras.nii.gz"):
        vol = load_volume(path)
        assert vol.modality == "CT" and vol.meta["modality_source"].startswith("intensity heuristic")
        for k in range(5):
            np.testing.assert_array_equal(vol.slice_raw(k), hus[k])
            np.testing.assert_array_equal(vol.slice_rgb(k), dicom_vol.slice_rgb(k))
        # A "prediction" on display slice 2 lands on the same world position in both volumes.
        mask = np.zeros(vol.slice_geometry().display_shape, np.uint8)
        mask[17, 23] = 1
        lab = vol.labels_from_slices({2: mask})
        ijk = np.argwhere(lab)[0]
        world = vol.affine @ [*ijk, 1]
        ref_ijk = np.argwhere(dicom_vol.labels_from_slices({2: mask}))[0]
        np.testing.assert_allclose(world, dicom_vol.affine @ [*ref_ijk, 1], atol=1e-4)


def test_dicom_volume_label_map_and_nifti_export(make_ct_series, tmp_path):
    folder, hus, _ = make_ct_series(n=3)
    vol = load_volume(folder)
    labels = np.zeros(vol.shape, np.uint8)
    labels[4, 9, 1] = 5
    out = nib.load(save_label_map(labels, vol, tmp_path / "seg.nii.gz"))
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-5)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), labels)
    ct = nib.load(save_volume(vol, tmp_path / "ct.nii.gz"))
    assert ct.get_data_dtype() == np.int16  # HU stored compactly
    np.testing.assert_array_equal(ct.get_fdata(dtype=np.float32), vol.data)


def test_slice_geometry_for_standard_orientations():
    ras = np.diag([1.0, 1.0, 1.0, 1.0])  # RAS+ voxel axes
    g = slice_geometry(ras, (30, 20, 10), axis=2)
    assert (g.plane, g.transpose, g.flip_rows, g.flip_cols, g.display_shape) == ("axial", True, True, True, (20, 30))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM-like (column, row, slice)
    g = slice_geometry(lps, (30, 20, 10), axis=-1)
    assert (g.plane, g.transpose, g.flip_rows, g.flip_cols) == ("axial", True, False, False)
    g = slice_geometry(ras, (30, 20, 10), axis=1)
    assert (g.plane, g.display_shape, g.flip_rows, g.flip_cols) == ("coronal", (10, 30), True, True)
    g = slice_geometry(ras, (30, 20, 10), axis=0)
    assert (g.plane, g.display_shape, g.flip_rows, g.flip_cols) == ("sagittal", (10, 20), True, True)
    g = slice_geometry(ras, (30, 20, 10), axis=0, reorient=False)
    assert (g.transpose, g.flip_rows, g.flip_cols, g.display_shape) == (False, False, False, (20, 10))
    with pytest.raises(ValueError):
        slice_geometry(ras, (30, 20, 10), axis=3)


def test_volume_can_be_built_directly():
    """Other modules (e.g. tests, synthetic data) may construct a Volume themselves."""
    from medsam3.io import choose_intensity

    data = np.zeros((4, 5, 6), np.float32)
    vol = Volume(data=data, affine=np.eye(4), spacing=(1.0, 1.0, 1.0), modality=None, intensity=choose_intensity(data))
    assert vol.num_slices() == 6 and vol.slice_rgb(0).shape == (5, 4, 3)
