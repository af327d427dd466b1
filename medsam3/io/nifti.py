"""NIfTI (.nii / .nii.gz) via nibabel: reading 3D/4D volumes, writing aligned label maps.

A label map written here is voxel-for-voxel aligned with its reference: same
shape, same affine, same zooms and the *same qform/sform matrices and codes*
(copied, not recomputed), so ITK-SNAP, 3D Slicer, FSL and nibabel all overlay
it exactly on the input scan.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError, disk_full_errors
from .errors import ImageReadError
from .limits import check_array_size
from .volume import as_label_array

if TYPE_CHECKING:
    from .volume import Volume

logger = logging.getLogger(__name__)


@dataclass
class NiftiVolume:
    """What the NIfTI reader hands to :class:`medsam3.io.volume.Volume`."""

    data: np.ndarray  # float32, 3D
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: Any
    meta: dict[str, Any] = field(default_factory=dict)


def _load(path: Path):
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises ImageFileError, gzip/zlib errors, EOFError, ...
        raise ImageReadError(
            path,
            f"not a readable NIfTI file ({type(exc).__name__}: {exc})",
            "the file may be corrupt or truncated; re-export it",
        ) from exc


def read_nifti(path: Path, volume_index: int | None = None) -> NiftiVolume:
    """Read one 3D volume from a NIfTI file.

    2D files become a single-slice volume. 4D files need ``volume_index``
    (0-based, along the 4th axis) unless they hold only one volume.
    """
    img = _load(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) > 4 and all(n == 1 for n in shape[4:]):
        shape = shape[:4]
    if len(shape) > 4:
        raise ImageReadError(
            path, f"NIfTI with {len(shape)} dimensions {shape} is not supported", "save a 3D (or 4D) volume"
        )
    index: tuple[Any, ...]
    meta: dict[str, Any] = {"source": "nifti", "original_shape": tuple(int(n) for n in img.shape)}
    if len(shape) == 4:
        n_vol = shape[3]
        if volume_index is None:
            if n_vol != 1:
                raise ImageReadError(
                    path,
                    f"4D NIfTI with {n_vol} volumes (shape {shape}) and no volume index given",
                    f"pass volume_index=0..{n_vol - 1} (CLI: --volume-index)",
                )
            volume_index = 0
        if not 0 <= int(volume_index) < n_vol:
            raise ImageReadError(
                path, f"volume index {volume_index} is out of range for {n_vol} volumes", f"use 0..{n_vol - 1}"
            )
        index = (slice(None), slice(None), slice(None), int(volume_index)) + (0,) * (len(img.shape) - 4)
        meta["volume_index"] = int(volume_index)
    else:
        if volume_index not in (None, 0):
            raise ImageReadError(
                path, f"volume index {volume_index} given, but the NIfTI is {len(shape)}D {shape}", "omit volume_index"
            )
        index = (Ellipsis,)
    itemsize = img.get_data_dtype().itemsize
    check_array_size(path, shape[:3], max(4, itemsize), "volume")
    _check_stored_size(path, img, shape, itemsize)
    try:
        data = np.asarray(img.dataobj[index], dtype=np.float32)  # dataobj applies scl_slope/inter
    except Exception as exc:  # noqa: BLE001 - truncated gz, short file, ...
        raise ImageReadError(
            path,
            f"NIfTI voxel data cannot be read ({type(exc).__name__}: {exc})",
            "the file may be truncated; re-export it",
        ) from exc
    while data.ndim < 3:
        data = data[..., None]
    if data.ndim != 3:  # pragma: no cover - guarded above
        raise ImageReadError(path, f"unexpected data shape {data.shape}", "save a 3D volume")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    hdr = img.header
    meta.update(
        qform_code=int(hdr["qform_code"]),
        sform_code=int(hdr["sform_code"]),
        descrip=bytes(hdr["descrip"].item()).split(b"\x00")[0].decode("latin-1").strip(),
        nifti_version=2 if type(img).__name__.startswith("Nifti2") else 1,
    )
    return NiftiVolume(
        data=data, affine=np.asarray(img.affine, dtype=np.float64), spacing=tuple(zooms), header=hdr, meta=meta
    )  # type: ignore[arg-type]


def _check_stored_size(path: Path, img, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a file shorter than its header says before allocating for it (a truncated file, or a few
    bytes declaring a huge volume). A .nii.gz is checked against its gzip trailer (size mod 4 GiB)."""
    needed = int(img.header.get_data_offset()) + math.prod(shape) * itemsize
    name = path.name.lower()
    if name.endswith(".nii"):
        stored = path.stat().st_size
    elif name.endswith(".gz") and needed < 2**32:
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            stored = int.from_bytes(fh.read(4), "little")
    else:
        return
    if stored < needed:
        raise ImageReadError(
            path,
            f"the header declares {' x '.join(map(str, shape))} voxels ({needed} bytes with the header), but the "
            f"file holds {stored} bytes",
            "the file is truncated or its header is corrupt; re-export it",
        )


def _check_nifti_path(path: Path) -> None:
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise UserError(f"label maps are written as NIfTI; the output path must end with .nii or .nii.gz, got '{path}'")


def _reference(reference: Volume | Any | str | PathLike[str]) -> tuple[tuple[int, ...], np.ndarray, Any]:
    """(spatial shape, affine, nibabel header or None) of the reference."""
    from .volume import Volume

    if isinstance(reference, Volume):
        return reference.shape, reference.affine, reference.header
    if isinstance(reference, (str, PathLike)):
        img = _load(Path(reference))
        return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine), img.header
    if hasattr(reference, "affine") and hasattr(reference, "header") and hasattr(reference, "shape"):
        return tuple(int(n) for n in reference.shape[:3]), np.asarray(reference.affine), reference.header
    raise TypeError(f"reference must be a Volume, a nibabel image or a NIfTI path, got {type(reference).__name__}")


def label_map_image(labels: np.ndarray, reference: Volume | Any | str | PathLike[str], dtype: Any = None):
    """The nibabel image :func:`save_label_map` writes (for callers that want it in memory)."""
    import nibabel as nib

    shape, affine, ref_header = _reference(reference)
    arr = as_label_array(labels, dtype)
    if arr.shape != shape:
        raise UserError(f"label map shape {arr.shape} does not match the reference volume shape {shape}")
    if ref_header is not None and isinstance(ref_header, nib.Nifti1Header):
        cls = nib.Nifti2Image if isinstance(ref_header, nib.Nifti2Header) else nib.Nifti1Image
        header = ref_header.copy()
        img = cls(arr, affine, header=header)
        img.set_qform(ref_header.get_qform(), code=int(ref_header["qform_code"]))
        img.set_sform(ref_header.get_sform(), code=int(ref_header["sform_code"]))
        # The reference may carry an intent or scaling: neither applies to labels.
        img.header.set_intent("none")
    else:
        img = nib.Nifti1Image(arr, affine)
        img.set_qform(affine, code=1)  # scanner coordinates (DICOM)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = int(arr.max()) if arr.size else 0
    img.header["descrip"] = b"medsam3 label map"
    img.header["aux_file"] = b""
    return img


def save_label_map(
    labels: np.ndarray, reference: Volume | Any | str | PathLike[str], path: str | PathLike[str], dtype: Any = None
) -> Path:
    """Write ``labels`` (shape == reference volume shape) as NIfTI aligned with ``reference``.

    ``reference``: the :class:`Volume` the labels were predicted on, a nibabel
    image, or a NIfTI path. dtype: uint8 or uint16 (default: smallest that fits).
    Returns the written path.
    """
    out = Path(path)
    _check_nifti_path(out)
    img = label_map_image(labels, reference, dtype)
    with disk_full_errors(out, "the label map"):
        out.parent.mkdir(parents=True, exist_ok=True)
        img.to_filename(out)
    logger.info(
        "wrote label map %s (shape %s, %s, max label %d)",
        out,
        img.shape,
        img.get_data_dtype(),
        int(img.header["cal_max"]),
    )
    return out


def volume_to_nifti(volume: Volume):
    """Intensities of ``volume`` as a nibabel image (e.g. to save a DICOM series as NIfTI).

    Integer-valued data (HU) is stored as int16 when it fits, else float32.
    """
    import nibabel as nib

    data = volume.data
    if (
        np.all(np.isfinite(data))
        and np.array_equal(data, np.round(data))
        and data.size
        and data.min() >= -32768
        and data.max() <= 32767
    ):
        data = data.astype(np.int16)
    if volume.header is not None and isinstance(volume.header, nib.Nifti1Header):
        cls = nib.Nifti2Image if isinstance(volume.header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(data, volume.affine, header=volume.header.copy())
        img.set_qform(volume.header.get_qform(), code=int(volume.header["qform_code"]))
        img.set_sform(volume.header.get_sform(), code=int(volume.header["sform_code"]))
    else:
        img = nib.Nifti1Image(data, volume.affine)
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    return img


def save_volume(volume: Volume, path: str | PathLike[str]) -> Path:
    """Write the intensities of ``volume`` (e.g. a DICOM series in HU) as NIfTI."""
    out = Path(path)
    _check_nifti_path(out)
    with disk_full_errors(out, "the volume"):
        out.parent.mkdir(parents=True, exist_ok=True)
        volume_to_nifti(volume).to_filename(out)
    return out
