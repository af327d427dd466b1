"""A 3D volume, its model-ready 2D slices, and the way back to a label volume.

Axis convention
---------------
``Volume.data`` keeps the voxel order of the source: the file's own array
order for NIfTI, and (column, row, slice) -- the ITK/NIfTI convention -- for
DICOM (slices sorted along the slice normal). ``Volume.affine`` maps voxel
indices (i, j, k) to RAS+ millimetres, as in NIfTI.

Slices are taken along a *voxel* axis (default ``axis=-1``, the last one:
axial for typical RAS/LPS-ordered CT/MR volumes and for every axial DICOM
series). With ``reorient=True`` (default) each slice is transposed / flipped,
using the affine, into the radiological display convention that DICOM viewers
use and that 2D training images (PNG exports of DICOM) follow:

* axial: patient's right on the image's left, anterior at the top;
* coronal: patient's right on the left, superior at the top;
* sagittal: anterior on the left, superior at the top.

So the same scan gives the same model input whether it arrives as a DICOM
series or as a NIfTI written by any converter. :class:`SliceGeometry` records
the transpose/flips, and :meth:`Volume.labels_from_slices` applies the exact
inverse so per-slice predictions land on the original voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .windows import IntensityMapping

logger = logging.getLogger(__name__)

_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
# Display targets in LPS for (rows go towards, columns go towards), keyed by the
# world axis the slice normal is closest to (0 = L/R, 1 = A/P, 2 = S/I).
_DISPLAY_TARGETS = {
    2: ("axial", np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])),  # rows -> posterior, cols -> left
    1: ("coronal", np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])),  # rows -> inferior, cols -> left
    0: ("sagittal", np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),  # rows -> inferior, cols -> posterior
}


@dataclass(frozen=True)
class SliceGeometry:
    """How a voxel slice becomes a display image, and back.

    ``np.take(data, k, axis)`` has shape ``voxel_shape`` with axes ``in_plane``
    (ascending). The display image is that array, transposed if ``transpose``,
    then flipped vertically/horizontally per ``flip_rows``/``flip_cols``.
    """

    axis: int
    in_plane: tuple[int, int]
    voxel_shape: tuple[int, int]
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    plane: str = "voxel"

    @property
    def display_shape(self) -> tuple[int, int]:
        return (self.voxel_shape[1], self.voxel_shape[0]) if self.transpose else self.voxel_shape

    def voxel_slice(self, volume: np.ndarray, index: int) -> np.ndarray:
        """``np.take(volume, index, axis)`` as a view: no copy of the volume (np.take copies a
        Fortran-ordered NIfTI array whole for every slice, ~0.2 s for a 240x240x155 volume)."""
        where: list = [slice(None)] * np.ndim(volume)
        where[self.axis] = index
        return np.asarray(volume)[tuple(where)]

    def display_slice(self, volume: np.ndarray, index: int) -> np.ndarray:
        """Slice ``index`` of a volume on this grid (intensities or labels), in display orientation."""
        return self.to_display(self.voxel_slice(volume, index))

    def to_display(self, voxel_slice: np.ndarray) -> np.ndarray:
        """Voxel slice (optionally with trailing channels) -> display orientation."""
        x = np.asarray(voxel_slice)
        if x.shape[:2] != self.voxel_shape:
            raise ValueError(f"slice shape {x.shape[:2]} does not match {self.voxel_shape}")
        if self.transpose:
            x = np.swapaxes(x, 0, 1)
        if self.flip_rows:
            x = x[::-1]
        if self.flip_cols:
            x = x[:, ::-1]
        return np.ascontiguousarray(x)

    def from_display(self, image: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_display`."""
        x = np.asarray(image)
        if x.shape[:2] != self.display_shape:
            raise ValueError(
                f"2D map of shape {x.shape[:2]} does not match the slice display shape {self.display_shape}"
            )
        if self.flip_cols:
            x = x[:, ::-1]
        if self.flip_rows:
            x = x[::-1]
        if self.transpose:
            x = np.swapaxes(x, 0, 1)
        return np.ascontiguousarray(x)


def slice_geometry(affine: np.ndarray, shape: Sequence[int], axis: int = -1, reorient: bool = True) -> SliceGeometry:
    """The :class:`SliceGeometry` for slicing a volume of ``shape`` along ``axis``."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {tuple(shape)}")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be in -3..2, got {axis}")
    ax = axis % 3
    a, b = (i for i in range(3) if i != ax)
    voxel_shape = (int(shape[a]), int(shape[b]))
    if not reorient:
        return SliceGeometry(ax, (a, b), voxel_shape)
    dirs = np.asarray(affine, dtype=np.float64)[:3, :3] * _RAS_TO_LPS[:, None]  # voxel axis directions in LPS
    norms = np.linalg.norm(dirs, axis=0)
    if np.any(norms == 0):
        logger.warning("degenerate affine; slices are not reoriented")
        return SliceGeometry(ax, (a, b), voxel_shape)
    dirs = dirs / norms
    plane, row_t, col_t = _DISPLAY_TARGETS[int(np.argmax(np.abs(dirs[:, ax])))]
    da, db = dirs[:, a], dirs[:, b]
    keep = abs(da @ row_t) + abs(db @ col_t)
    swap = abs(db @ row_t) + abs(da @ col_t)
    transpose = bool(swap > keep + 1e-6)
    row_dir, col_dir = (db, da) if transpose else (da, db)
    return SliceGeometry(
        axis=ax,
        in_plane=(a, b),
        voxel_shape=voxel_shape,
        transpose=transpose,
        flip_rows=bool(row_dir @ row_t < 0),
        flip_cols=bool(col_dir @ col_t < 0),
        plane=plane,
    )


def label_dtype(max_label: int) -> np.dtype:
    """uint8 for labels up to 255, uint16 up to 65535."""
    if max_label <= 255:
        return np.dtype(np.uint8)
    if max_label <= 65535:
        return np.dtype(np.uint16)
    raise ValueError(f"label value {max_label} does not fit in uint16")


def as_label_array(labels: np.ndarray, dtype: Any = None) -> np.ndarray:
    """Validate integer labels (>= 0) and cast to uint8/uint16 (auto from the max when ``dtype`` is None)."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError("label maps must hold whole numbers (got non-integer floats)")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"label maps must be integer or boolean, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"label maps must be >= 0, got minimum {arr.min()}")
    max_label = int(arr.max()) if arr.size else 0
    target = label_dtype(max_label) if dtype is None else np.dtype(dtype)
    if target not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"label dtype must be uint8 or uint16, got {target}")
    if max_label > np.iinfo(target).max:
        raise ValueError(f"label value {max_label} does not fit in {target}")
    return arr.astype(target)


@dataclass
class Volume:
    """A 3D image with geometry, ready to be cut into model-ready slices.

    Attributes:
        data: float32 intensities (e.g. HU for CT) in the source's voxel order.
        affine: 4x4 voxel -> RAS+ mm.
        spacing: voxel size in mm per voxel axis.
        modality: "CT", "MR", ... from DICOM; for NIfTI "CT" only when HU-like data
            was detected (see ``meta["modality_source"]``), else None.
        intensity: the mapping to uint8, computed once from the whole volume.
        path: where it came from.
        meta: reader details (sorting, source, 4D index, DICOM tags, ...).
        header: the source NIfTI header (kept so label maps copy qform/sform codes), or None.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    modality: str | None
    intensity: IntensityMapping
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    header: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def intensity_description(self) -> str:
        return self.intensity.description

    def slice_geometry(self, axis: int = -1, reorient: bool = True) -> SliceGeometry:
        """Geometry of slices along ``axis`` (see module docstring)."""
        return slice_geometry(self.affine, self.data.shape, axis, reorient)

    def num_slices(self, axis: int = -1) -> int:
        return int(self.data.shape[axis])

    def slice_raw(self, index: int, axis: int = -1, reorient: bool = True) -> np.ndarray:
        """Raw intensities of one slice, in display orientation (float32, 2D)."""
        geo = self.slice_geometry(axis, reorient)
        n = self.data.shape[geo.axis]
        if not -n <= index < n:
            raise IndexError(f"slice {index} out of range for {n} slices along axis {geo.axis}")
        return geo.display_slice(self.data, index)

    def slice_rgb(self, index: int, axis: int = -1, reorient: bool = True) -> np.ndarray:
        """One model-ready slice: uint8 (H, W, 3) with the volume's intensity mapping."""
        gray = self.intensity.apply(self.slice_raw(index, axis, reorient))
        return np.repeat(gray[..., None], 3, axis=-1)

    def slices_rgb(self, axis: int = -1, reorient: bool = True) -> Iterator[np.ndarray]:
        """Yield every slice along ``axis`` as uint8 (H, W, 3), in index order 0..N-1.

        A generator, so a 600-slice CT does not need 450 MB of RGB at once.
        """
        for k in range(self.num_slices(axis)):
            yield self.slice_rgb(k, axis, reorient)

    def labels_from_slices(
        self,
        slices: Sequence[np.ndarray] | np.ndarray | Mapping[int, np.ndarray],
        axis: int = -1,
        reorient: bool = True,
        dtype: Any = None,
    ) -> np.ndarray:
        """Per-slice 2D label maps (display orientation) -> label volume of ``data.shape``.

        ``slices`` is one 2D map per slice (list or (N, H, W) array, same order as
        :meth:`slices_rgb`), or a ``{slice_index: map}`` dict when only some
        slices were segmented (the rest stay 0). Use the same ``axis``/``reorient``
        as when the slices were produced. dtype: uint8/uint16, auto by default.
        """
        geo = self.slice_geometry(axis, reorient)
        n = self.data.shape[geo.axis]
        if isinstance(slices, Mapping):
            items = list(slices.items())
        else:
            seq = list(slices) if not isinstance(slices, np.ndarray) else [slices[k] for k in range(slices.shape[0])]
            if len(seq) != n:
                raise ValueError(f"got {len(seq)} slice maps for {n} slices along axis {geo.axis}")
            items = list(enumerate(seq))
        converted: list[tuple[int, np.ndarray]] = []
        max_label = 0
        for k, m in items:
            if not -n <= int(k) < n:
                raise IndexError(f"slice index {k} out of range for {n} slices")
            lab = as_label_array(m, np.uint16)
            if lab.ndim != 2:
                raise ValueError(f"slice map {k} must be 2D, got shape {lab.shape}")
            converted.append((int(k) % n, geo.from_display(lab)))
            if lab.size:
                max_label = max(max_label, int(lab.max()))
        out_dtype = label_dtype(max_label) if dtype is None else np.dtype(dtype)
        if out_dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)) or max_label > np.iinfo(out_dtype).max:
            raise ValueError(f"labels up to {max_label} cannot be stored as {out_dtype} (use uint8 or uint16)")
        out = np.zeros(self.data.shape, dtype=out_dtype)
        index: list[Any] = [slice(None)] * 3
        for k, lab in converted:
            index[geo.axis] = k
            out[tuple(index)] = lab
        return out
