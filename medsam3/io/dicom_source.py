"""The DICOM instances a result was computed on, and which label-map slice belongs to which of them.

DICOM SEG and RTSTRUCT outputs reference their source images by SOP Instance UID (and frame number
for a multi-frame image) and place every frame / contour in the source's patient coordinates. This
module reads the source headers again (no pixel data), checks that they form one geometry a
derived object can reference -- one series, one Frame of Reference, the same size, orientation
and pixel spacing on every slice, positions present -- and sorts the frames along the slice
normal exactly as :mod:`.dicom_volume` sorted them when it built the volume, so slice ``k`` of a
label map (voxel order column, row, slice) is frame ``k`` of :attr:`DicomSource.frames`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dicom import LPS_TO_RAS, is_dicom_file, pixel_spacing_of, read_dataset
from .dicom_volume import _fg_value, _list_candidate_files, _vec
from .errors import ImageReadError

__all__ = ["DicomSource", "DicomSourceError", "SourceFrame", "read_dicom_source"]

logger = logging.getLogger(__name__)

_ORIENTATION_TOL = 1e-4
_SPACING_RTOL = 1e-4
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


class DicomSourceError(ImageReadError):
    """The source cannot be referenced by a DICOM SEG / RTSTRUCT (mixed geometry, no image, no positions)."""


@dataclass(frozen=True)
class SourceFrame:
    """One 2D frame of the source: which dataset, which frame of it (1-based; None for a single-frame
    instance), and where it lies (ImagePositionPatient, LPS mm; None for an image without geometry)."""

    dataset_index: int
    frame_number: int | None
    position: np.ndarray | None
    sop_instance_uid: str


@dataclass
class DicomSource:
    """Source headers (``datasets``, without pixel data) and their frames in slice order."""

    path: Path
    datasets: list[Any]
    frames: list[SourceFrame]
    rows: int
    columns: int
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    multiframe: bool

    @property
    def has_geometry(self) -> bool:
        return self.orientation is not None and all(f.position is not None for f in self.frames)

    @property
    def frame_of_reference_uid(self) -> str | None:
        return self.datasets[0].get("FrameOfReferenceUID")

    def label_frames(self, labels: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
        """A label map in medsam3's voxel order -> one (rows, columns) frame per source frame.

        ``labels`` is (columns, rows, slices) for a volume read from this source (``affine``: its
        RAS affine, checked against the source positions), or (rows, columns) for a 2D image.
        """
        labels = np.asarray(labels)
        if labels.ndim == 2:
            if len(self.frames) != 1 or labels.shape != (self.rows, self.columns):
                raise DicomSourceError(
                    self.path,
                    f"a 2D label map of shape {labels.shape} does not fit {len(self.frames)} frame(s) of "
                    f"{self.rows}x{self.columns}",
                    "pass the label map computed on this image",
                )
            return labels[None]
        expected = (self.columns, self.rows, len(self.frames))
        if labels.shape != expected:
            raise DicomSourceError(
                self.path,
                f"the label map's shape {labels.shape} does not match the source (columns, rows, frames) {expected}",
                "DICOM outputs need the label map of the volume read from this very series/file",
            )
        if affine is not None and self.has_geometry:
            self._check_affine(np.asarray(affine, dtype=np.float64))
        return np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))

    def _check_affine(self, affine: np.ndarray) -> None:
        lps = LPS_TO_RAS @ affine
        assert self.orientation is not None and self.pixel_spacing is not None
        row_dir, col_dir = self.orientation[:3], self.orientation[3:]
        dr, dc = self.pixel_spacing
        tol = 1e-3 * max(dr, dc, 1.0)
        first = self.frames[0].position
        if (
            not np.allclose(lps[:3, 0], row_dir * dc, atol=tol)
            or not np.allclose(lps[:3, 1], col_dir * dr, atol=tol)
            or not np.allclose(lps[:3, 3], first, atol=max(tol, 1e-3))
        ):
            raise DicomSourceError(
                self.path,
                "the label map's affine does not match the source's orientation, spacing and first position",
                "DICOM outputs need the label map of the volume read from this very series/file",
            )
        for k, frame in enumerate(self.frames):
            expected = lps @ np.array([0.0, 0.0, float(k), 1.0])
            if not np.allclose(expected[:3], frame.position, atol=max(0.05 * float(np.linalg.norm(lps[:3, 2])), tol)):
                logger.info(
                    "%s: slice %d lies at %s mm, the affine says %s (non-uniform spacing); DICOM outputs use the "
                    "slice's own position",
                    self.path,
                    k,
                    np.round(frame.position, 3).tolist(),
                    np.round(expected[:3], 3).tolist(),
                )


def _image_headers(path: Path) -> list[tuple[Path, Any]]:
    files = [path] if path.is_file() else _list_candidate_files(path)
    headers = []
    for f in files:
        if path.is_dir() and not is_dicom_file(f) and f.suffix.lower() not in (".dcm", ".dicom", ".ima", ""):
            continue
        try:
            ds = read_dataset(f, stop_before_pixels=True)
        except ImageReadError:
            if path.is_file():
                raise
            continue
        if "Rows" in ds:
            headers.append((f, ds))
        elif path.is_file():
            kind = getattr(ds.get("SOPClassUID"), "name", None) or "non-image object"
            raise DicomSourceError(path, f"DICOM file without an image (it is a {kind})", "pass an image DICOM")
    if not headers:
        raise DicomSourceError(path, "no DICOM image found", "DICOM SEG/RTSTRUCT need a DICOM image source")
    return headers


def _same_geometry(headers: list[tuple[Path, Any]], path: Path) -> None:
    first_file, first = headers[0]
    checks = {
        "SeriesInstanceUID": lambda ds: str(ds.get("SeriesInstanceUID", "")),
        "FrameOfReferenceUID": lambda ds: str(ds.get("FrameOfReferenceUID", "")),
        "size (Rows x Columns)": lambda ds: (int(ds.Rows), int(ds.Columns)),
    }
    for what, get in checks.items():
        for f, ds in headers[1:]:
            if get(ds) != get(first):
                raise DicomSourceError(
                    path,
                    f"slices do not share one {what}: {first_file.name} has {get(first)!r}, {f.name} has {get(ds)!r}",
                    "DICOM SEG/RTSTRUCT reference one geometry; keep only the slices of one series in the folder",
                )
    ref_o = _vec(first.get("ImageOrientationPatient"), 6)
    ref_s = pixel_spacing_of(first)
    for f, ds in headers[1:]:
        o, s = _vec(ds.get("ImageOrientationPatient"), 6), pixel_spacing_of(ds)
        if (o is None) != (ref_o is None) or (o is not None and not np.allclose(o, ref_o, atol=_ORIENTATION_TOL)):
            raise DicomSourceError(
                path,
                f"slices do not share one orientation ({first_file.name}: {ref_o}, {f.name}: {o})",
                "remove localizer/scout images; DICOM SEG/RTSTRUCT need one orientation",
            )
        if (s is None) != (ref_s is None) or (s is not None and not np.allclose(s, ref_s, rtol=_SPACING_RTOL)):
            raise DicomSourceError(
                path,
                f"slices do not share one pixel spacing ({first_file.name}: {ref_s}, {f.name}: {s})",
                "DICOM SEG/RTSTRUCT need one pixel spacing; keep only the slices of one series in the folder",
            )


def _sorted(frames: list[SourceFrame], orientation: np.ndarray | None, path: Path) -> list[SourceFrame]:
    if len(frames) == 1:
        return frames
    if orientation is None or any(f.position is None for f in frames):
        raise DicomSourceError(
            path,
            "slices without ImagePositionPatient/ImageOrientationPatient cannot be placed in patient coordinates",
            "DICOM SEG/RTSTRUCT of a volume need slice positions; export the series with its geometry",
        )
    normal = np.cross(orientation[:3], orientation[3:])
    proj = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(proj, kind="stable")
    if np.any(np.diff(proj[order]) < 1e-4):
        raise DicomSourceError(
            path, "several slices lie at the same position", "keep one acquisition per folder (one volume)"
        )
    return [frames[int(k)] for k in order]


def read_dicom_source(path: str | Path) -> DicomSource:
    """Headers and frame order of the DICOM image(s) at ``path``: a series folder, a multi-frame file or one image.

    Raises :class:`DicomSourceError` when they cannot be referenced by one derived object.
    """
    path = Path(path)
    headers = _image_headers(path)
    by_series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(by_series) > 1:
        raise DicomSourceError(
            path, f"the folder holds {len(by_series)} DICOM series", "put each series in its own folder"
        )
    datasets = [ds for _, ds in headers]
    first = datasets[0]
    for f, ds in headers:
        missing = [tag for tag in _REQUIRED_UIDS if not str(ds.get(tag, "") or "").strip()]
        if missing:
            raise DicomSourceError(
                f,
                f"the image has no {', '.join(missing)} (blanked by an anonymiser?), and a DICOM SEG/RTSTRUCT must "
                "reference its source by these UIDs",
                "use the images as exported from the PACS/scanner, or an anonymiser that replaces UIDs instead of "
                "emptying them",
            )
    n_frames = int(first.get("NumberOfFrames", 1) or 1)
    if len(headers) > 1:
        if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
            raise DicomSourceError(path, "series mixes multi-frame and single-frame files", "one file per volume")
        _same_geometry(headers, path)
        orientation = _vec(first.get("ImageOrientationPatient"), 6)
        frames = [
            SourceFrame(i, None, _vec(ds.get("ImagePositionPatient"), 3), str(ds.SOPInstanceUID))
            for i, ds in enumerate(datasets)
        ]
        spacing = pixel_spacing_of(first)
        multiframe = False
    elif n_frames > 1 or "PerFrameFunctionalGroupsSequence" in first:
        if "PerFrameFunctionalGroupsSequence" not in first:
            raise DicomSourceError(
                path,
                "multi-frame DICOM without functional groups (no per-frame positions)",
                "DICOM SEG/RTSTRUCT need an enhanced multi-frame image (or a series of single-frame files)",
            )
        orientations = [
            _vec(_fg_value(first, k, "PlaneOrientationSequence", "ImageOrientationPatient"), 6) for k in range(n_frames)
        ]
        spacings = set()
        for k in range(n_frames):
            ps = _vec(_fg_value(first, k, "PixelMeasuresSequence", "PixelSpacing"), 2)
            spacings.add(tuple(round(float(v), 6) for v in ps) if ps is not None else ())
        orientation = orientations[0]
        if orientation is None or any(
            o is None or not np.allclose(o, orientation, atol=_ORIENTATION_TOL) for o in orientations
        ):
            raise DicomSourceError(path, "frames do not share one orientation", "one orientation per file")
        if len(spacings) != 1 or len(next(iter(spacings))) != 2:
            raise DicomSourceError(path, "frames do not share one pixel spacing", "one pixel spacing per file")
        row_s, col_s = next(iter(spacings))
        spacing = (float(row_s), float(col_s))
        frames = [
            SourceFrame(
                0,
                k + 1,
                _vec(_fg_value(first, k, "PlanePositionSequence", "ImagePositionPatient"), 3),
                str(first.SOPInstanceUID),
            )
            for k in range(n_frames)
        ]
        multiframe = True
    else:
        orientation = _vec(first.get("ImageOrientationPatient"), 6)
        frames = [SourceFrame(0, None, _vec(first.get("ImagePositionPatient"), 3), str(first.SOPInstanceUID))]
        spacing = pixel_spacing_of(first)
        multiframe = False
    frames = _sorted(frames, orientation, path)
    return DicomSource(
        path=path,
        datasets=datasets,
        frames=frames,
        rows=int(first.Rows),
        columns=int(first.Columns),
        orientation=orientation,
        pixel_spacing=spacing,
        multiframe=multiframe,
    )
