"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) volumes via SimpleITK (optional: ``pip install SimpleITK``).

nnU-Net datasets and challenge data often come in these formats. SimpleITK reads them with their
direction cosines; we hand them on in NIfTI's conventions (voxel order i, j, k and an affine to
RAS+ mm) so :class:`medsam3.io.volume.Volume` slices and displays them like any NIfTI file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageReadError, MissingCodecError
from .nifti import NiftiVolume

ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise MissingCodecError(
            "SimpleITK", "MetaImage/NRRD files need SimpleITK, which is not installed", "pip install SimpleITK"
        ) from exc
    return sitk


def read_itk(path: Path, volume_index: int | None = None) -> NiftiVolume:
    """One 3D volume (float32, voxel order i, j, k) with its RAS+ affine; 4D files need ``volume_index``."""
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(
            path, f"not a readable MetaImage/NRRD file ({exc})".splitlines()[0], "re-export it"
        ) from exc
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, components]) -> reversed below
    if img.GetNumberOfComponentsPerPixel() > 1:
        n = arr.shape[-1]
        if volume_index is None or not 0 <= volume_index < n:
            raise ImageReadError(path, f"holds {n} components per voxel", f"pass a volume index 0..{n - 1}")
        arr = arr[..., volume_index]
    elif volume_index not in (None, 0):
        raise ImageReadError(path, f"volume index {volume_index} given for a one-component image", "omit it")
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise ImageReadError(path, f"{dim}D image", "save a 3D volume")
    data = np.ascontiguousarray(np.transpose(arr).astype(np.float32))
    spacing = list(img.GetSpacing())
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    origin = list(img.GetOrigin())
    if dim == 2:
        data = data[..., None]
        direction = np.pad(direction, ((0, 1), (0, 1)))
        direction[2, 2] = 1.0
        spacing.append(1.0)
        origin.append(0.0)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin)
    meta = {"source": "itk", "original_shape": tuple(int(n) for n in data.shape)}
    return NiftiVolume(data=data, affine=affine, spacing=tuple(float(s) for s in spacing), header=None, meta=meta)
