"""MetaImage / NRRD volumes (SimpleITK) read with the same geometry and slices as the NIfTI of the same image."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.io import is_volume_path, load_volume

sitk = pytest.importorskip("SimpleITK")


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_itk_volume_equals_the_nifti_written_from_the_same_image(tmp_path, ending):
    data = np.random.default_rng(0).normal(size=(5, 12, 9)).astype(np.float32)  # (z, y, x) as SimpleITK holds it
    img = sitk.GetImageFromArray(data)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((10.0, -4.0, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated in-plane: display must undo it
    sitk.WriteImage(img, str(tmp_path / f"scan{ending}"))
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))  # SimpleITK's own LPS -> RAS conversion, read by nibabel
    assert is_volume_path(tmp_path / f"scan{ending}")
    ours, ref = load_volume(tmp_path / f"scan{ending}"), load_volume(tmp_path / "scan.nii.gz")
    assert ours.shape == ref.shape == (9, 12, 5)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(ours.data, ref.data)
    for k in range(ours.num_slices()):
        np.testing.assert_array_equal(ours.slice_rgb(k), ref.slice_rgb(k))
