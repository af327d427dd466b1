"""DICOM volumes via pydicom: series folders and multi-frame files, with their geometry.

A series is sorted by each slice's ImagePositionPatient projected on the slice normal
(row direction x column direction of ImageOrientationPatient) -- never by file name, which is often
not in anatomical order -- with InstanceNumber as a warned fallback. Voxel order of the resulting
volume is (column, row, slice), the ITK/NIfTI convention, and the affine is converted LPS -> RAS so
it can be written to NIfTI unchanged. Pixel decoding and tags: :mod:`medsam3.io.dicom`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dicom import (
    LPS_TO_RAS,
    basic_meta_of,
    corrupt_file_errors,
    decode_pixels,
    first_window_of,
    floats_of,
    is_dicom_file,
    pixel_spacing_of,
    read_dataset,
)
from .errors import ImageReadError
from .limits import check_array_size

logger = logging.getLogger(__name__)


@dataclass
class _SliceInfo:
    """Geometry of one slice (a file of a series, or a frame of a multi-frame file)."""

    source: str
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    instance: int | None
    rescale: tuple[float, float] | None = None  # (slope, intercept) from functional groups


@dataclass
class DicomVolume:
    """What the DICOM readers hand to :class:`medsam3.io.volume.Volume`."""

    data: np.ndarray  # float32, (columns, rows, slices)
    affine: np.ndarray  # 4x4, RAS
    spacing: tuple[float, float, float]
    modality: str | None
    invert: bool
    file_window: tuple[float, float] | None
    meta: dict[str, Any]


def _vec(value: Any, n: int) -> np.ndarray | None:
    v = floats_of(value)
    if v is None or len(v) != n or not np.all(np.isfinite(v)):
        return None
    return np.asarray(v, dtype=np.float64)


def _slice_thickness(ds) -> float | None:
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        v = floats_of(ds.get(tag))
        if v and v[0] > 0:
            return v[0]
    return None


def _order_slices(
    infos: Sequence[_SliceInfo], path: Path, what: str, fallback: str = "InstanceNumber"
) -> tuple[list[int], dict[str, Any]]:
    """Indices of ``infos`` in spatial order, plus how the order was decided."""
    n = len(infos)
    if n == 1:
        return [0], {"sorted_by": "single slice"}
    if all(i.position is not None for i in infos) and all(i.orientation is not None for i in infos):
        ref = infos[0].orientation
        assert ref is not None
        for info in infos:
            if not np.allclose(info.orientation, ref, atol=1e-3):
                raise ImageReadError(
                    path,
                    f"{what} mixes slice orientations ({list(np.round(ref, 4))} vs "
                    f"{list(np.round(info.orientation, 4))} in {info.source})",
                    "it probably contains localizer/scout images; keep only one series/orientation in the folder",
                )
        normal = np.cross(ref[:3], ref[3:])
        proj = np.array([float(np.dot(i.position, normal)) for i in infos])
        order = [int(k) for k in np.argsort(proj, kind="stable")]
        gaps = np.diff(proj[order])
        if np.any(gaps < 1e-4):
            k = int(np.argmin(gaps))
            raise ImageReadError(
                path,
                f"{what} has several slices at the same position ({infos[order[k]].source} and "
                f"{infos[order[k + 1]].source} at {proj[order[k]]:.3f} mm along the slice normal)",
                "the folder probably mixes acquisitions, echoes or time points; split them into one folder per volume",
            )
        return order, {"sorted_by": "ImagePositionPatient", "slice_positions": [float(p) for p in proj[order]]}
    if all(i.instance is not None for i in infos):
        logger.warning(
            "%s: no ImagePositionPatient/ImageOrientationPatient on every slice; ordering %s by %s",
            path,
            what,
            fallback,
        )
        order = [int(k) for k in np.argsort([i.instance for i in infos], kind="stable")]
        return order, {"sorted_by": fallback}
    logger.warning(
        "%s: neither slice positions nor InstanceNumber available; keeping %s in stored/file order", path, what
    )
    return list(range(n)), {"sorted_by": "stored order"}


def _geometry(
    infos: Sequence[_SliceInfo], default_thickness: float | None, path: Path
) -> tuple[np.ndarray, tuple[float, float, float], dict[str, Any]]:
    """4x4 RAS affine for voxel order (column, row, slice) from sorted slices."""
    first = infos[0]
    meta: dict[str, Any] = {}
    if first.orientation is not None:
        row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    else:
        logger.warning(
            "%s: no ImageOrientationPatient; assuming axial LPS-aligned axes (affine is a placeholder)", path
        )
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        meta["geometry"] = "placeholder (no orientation)"
    normal = np.cross(row_dir, col_dir)
    spacings = {i.pixel_spacing for i in infos if i.pixel_spacing is not None}
    if len(spacings) > 1:
        logger.warning("%s: PixelSpacing differs between slices %s; using the first slice's", path, sorted(spacings))
    if first.pixel_spacing is not None:
        dr, dc = first.pixel_spacing
    else:
        logger.warning("%s: no PixelSpacing; assuming 1 mm pixels", path)
        dr = dc = 1.0
        meta.setdefault("geometry", "placeholder (no pixel spacing)")
    n = len(infos)
    positions = [i.position for i in infos]
    if n > 1 and all(p is not None for p in positions):
        step = (positions[-1] - positions[0]) / (n - 1)
        proj = np.array([float(np.dot(p, normal)) for p in positions])
        gaps = np.diff(proj)
        if gaps.max() - gaps.min() > max(0.01 * abs(gaps.mean()), 1e-3):
            logger.warning(
                "%s: slice spacing is not uniform (%.4g..%.4g mm; missing slices?); the affine uses the mean %.4g mm",
                path,
                gaps.min(),
                gaps.max(),
                gaps.mean(),
            )
            meta["non_uniform_spacing"] = (float(gaps.min()), float(gaps.max()))
        cos = abs(float(np.dot(step, normal))) / (np.linalg.norm(step) or 1.0)
        if cos < 0.9999:
            logger.info(
                "%s: slices are sheared (gantry tilt %.2f deg); the affine keeps the shear",
                path,
                np.degrees(np.arccos(min(cos, 1.0))),
            )
            meta["gantry_tilt_deg"] = float(np.degrees(np.arccos(min(cos, 1.0))))
    else:
        thickness = default_thickness or 1.0
        if n > 1:
            logger.warning(
                "%s: no slice positions; using slice spacing %.4g mm along the normal (affine origin is a placeholder)",
                path,
                thickness,
            )
            meta.setdefault("geometry", "placeholder (no slice positions)")
        step = normal * thickness
    origin = positions[0] if positions[0] is not None else np.zeros(3)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc  # voxel axis 0 = column index, moves along the row direction
    lps[:3, 1] = col_dir * dr  # voxel axis 1 = row index
    lps[:3, 2] = step
    lps[:3, 3] = origin
    spacing = (float(dc), float(dr), float(np.linalg.norm(step)))
    return LPS_TO_RAS @ lps, spacing, meta


def _info_from_ds(ds, source: str) -> _SliceInfo:
    inst = ds.get("InstanceNumber")
    return _SliceInfo(
        source=source,
        position=_vec(ds.get("ImagePositionPatient"), 3),
        orientation=_vec(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=pixel_spacing_of(ds),
        instance=int(inst) if inst not in (None, "") else None,
    )


def _check_grayscale(ds, path: Path) -> None:
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not pi.startswith("MONOCHROME"):
        raise ImageReadError(
            path,
            f"colour DICOM ({pi}) cannot be read as a 3D volume",
            "read single frames with read_rgb(), or export grayscale",
        )


def _list_candidate_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files:
            logger.info("%s has no files at the top level; using %d files from subfolders", folder, len(files))
    return [p for p in files if p.name.upper() != "DICOMDIR"]


@corrupt_file_errors
def read_dicom_series(folder: Path, *, series_uid: str | None = None) -> DicomVolume:
    """A folder of single-frame DICOM files (one series) -> volume.

    Non-DICOM files and DICOM objects without pixels (SR, RTSTRUCT) are skipped.
    If the folder holds several series, pass ``series_uid``; the error lists them.
    """
    from pydicom.pixels import apply_modality_lut

    files = _list_candidate_files(folder)
    headers: list[tuple[Path, Any]] = []
    skipped: list[str] = []
    for f in files:
        if not is_dicom_file(f) and f.suffix.lower() not in (".dcm", ".dicom", ".ima", ""):
            skipped.append(f.name)
            continue
        try:
            ds = read_dataset(f, stop_before_pixels=True)
        except ImageReadError as exc:
            logger.info("skipping %s: %s", f, exc.reason)
            skipped.append(f.name)
            continue
        if "Rows" not in ds:
            skipped.append(f.name)
            continue
        headers.append((f, ds))
    if skipped:
        logger.info("%s: skipped %d non-image / non-DICOM files (e.g. %s)", folder, len(skipped), skipped[0])
    if not headers:
        raise ImageReadError(
            folder,
            f"no DICOM image files found in the folder ({len(files)} files looked at)",
            "point to the folder that directly contains the .dcm slices of one series",
        )

    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise ImageReadError(
                folder, f"series {series_uid} is not in the folder", f"available series: {', '.join(by_series)}"
            )
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        listing = "; ".join(
            f"{uid} ({len(items)} files, '{items[0][1].get('SeriesDescription', '')}', "
            f"{items[0][1].get('Modality', '?')})"
            for uid, items in by_series.items()
        )
        raise ImageReadError(
            folder,
            f"the folder holds {len(by_series)} DICOM series: {listing}",
            "pass series_uid=... or put each series in its own folder",
        )
    else:
        chosen = next(iter(by_series.values()))

    if len(chosen) == 1:
        return read_dicom_multiframe(chosen[0][0])
    multi = [f.name for f, ds in chosen if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise ImageReadError(
            folder,
            f"series mixes multi-frame files ({multi[0]}) with other files",
            "load each multi-frame file on its own",
        )
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in chosen}
    if len(shapes) > 1:
        raise ImageReadError(
            folder,
            f"slices have different sizes {sorted(shapes)}",
            "the folder mixes series; keep one series per folder",
        )

    rows, columns = next(iter(shapes))
    check_array_size(folder, (len(chosen), rows, columns), 4, "volume")  # before decoding any slice
    infos = [_info_from_ds(ds, f.name) for f, ds in chosen]
    order, sort_meta = _order_slices(infos, folder, "the series")
    chosen = [chosen[k] for k in order]
    infos = [infos[k] for k in order]

    first_full = None
    slices: list[np.ndarray] = []
    for f, _ in chosen:
        ds = read_dataset(f)
        _check_grayscale(ds, f)
        arr = decode_pixels(ds, f)
        slices.append(np.asarray(apply_modality_lut(arr, ds), dtype=np.float32).T)
        if first_full is None:
            first_full = ds
    assert first_full is not None
    data = np.stack(slices, axis=-1)
    affine, spacing, geo_meta = _geometry(infos, _slice_thickness(first_full), folder)
    meta = {
        **basic_meta_of(first_full),
        **sort_meta,
        **geo_meta,
        "source": "dicom_series",
        "files": [f.name for f, _ in chosen],
    }
    return DicomVolume(
        data=data,
        affine=affine,
        spacing=spacing,
        modality=first_full.get("Modality"),
        invert=str(first_full.get("PhotometricInterpretation")) == "MONOCHROME1",
        file_window=first_window_of(first_full),
        meta=meta,
    )


def _fg_item(ds, frame: int, sequence: str):
    """The first item of functional-group ``sequence`` for ``frame`` (per-frame wins over shared)."""
    for container_name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        container = ds.get(container_name)
        if container is not None and len(container) > index:
            seq = container[index].get(sequence)
            if seq is not None and len(seq) > 0:
                return seq[0]
    return None


def _fg_value(ds, frame: int, sequence: str, attr: str) -> Any:
    item = _fg_item(ds, frame, sequence)
    return item.get(attr) if item is not None else None


@corrupt_file_errors
def read_dicom_multiframe(path: Path) -> DicomVolume:
    """A single DICOM file (multi-frame, or one slice) -> volume.

    Geometry comes from enhanced functional groups (PlanePosition / PlaneOrientation /
    PixelMeasures / PixelValueTransformation, per frame or shared), or for classic
    multi-frame objects (e.g. RTDOSE) from ImagePositionPatient + GridFrameOffsetVector.
    """
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut

    ds = read_dataset(path)
    _check_grayscale(ds, path)
    arr = decode_pixels(ds, path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1 or arr.ndim == 2:
        arr = arr.reshape((1,) + arr.shape[-2:])
    n = arr.shape[0]
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    top = _info_from_ds(ds, path.name)
    infos: list[_SliceInfo] = []
    offsets = floats_of(ds.get("GridFrameOffsetVector"))
    for k in range(n):
        if enhanced:
            ps = floats_of(_fg_value(ds, k, "PixelMeasuresSequence", "PixelSpacing"))
            slope = _fg_value(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _fg_value(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
            info = _SliceInfo(
                source=f"frame {k}",
                position=_vec(_fg_value(ds, k, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_vec(_fg_value(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=(ps[0], ps[1]) if ps and len(ps) == 2 else top.pixel_spacing,
                instance=k,
                rescale=(float(slope), float(intercept)) if slope is not None and intercept is not None else None,
            )
            if info.position is None:
                info.position = top.position if n == 1 else None
            if info.orientation is None:
                info.orientation = top.orientation
        else:
            pos = top.position
            if pos is not None and top.orientation is not None and offsets and len(offsets) == n:
                normal = np.cross(top.orientation[:3], top.orientation[3:])
                pos = top.position + offsets[k] * normal
            elif n > 1:
                pos = None
            info = _SliceInfo(f"frame {k}", pos, top.orientation, top.pixel_spacing, k)
        infos.append(info)

    order, sort_meta = _order_slices(infos, path, "the frames", fallback="stored frame order")
    infos = [infos[k] for k in order]
    slices = []
    for k, info in zip(order, infos, strict=True):
        if info.rescale is not None:
            lut_ds = Dataset()
            lut_ds.RescaleSlope, lut_ds.RescaleIntercept = info.rescale
            frame = apply_modality_lut(arr[k], lut_ds)
        else:
            frame = apply_modality_lut(arr[k], ds)
        slices.append(np.asarray(frame, dtype=np.float32).T)
    data = np.stack(slices, axis=-1)
    thickness = floats_of(_fg_value(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")) or floats_of(
        _fg_value(ds, 0, "PixelMeasuresSequence", "SliceThickness")
    )
    affine, spacing, geo_meta = _geometry(infos, thickness[0] if thickness else _slice_thickness(ds), path)
    file_window = first_window_of(ds)
    if file_window is None and enhanced:
        item = _fg_item(ds, 0, "FrameVOILUTSequence")
        file_window = first_window_of(item) if item is not None else None
    meta = {**basic_meta_of(ds), **sort_meta, **geo_meta, "source": "dicom_file", "frame_order": order}
    return DicomVolume(
        data=data,
        affine=affine,
        spacing=spacing,
        modality=ds.get("Modality"),
        invert=str(ds.get("PhotometricInterpretation")) == "MONOCHROME1",
        file_window=file_window,
        meta=meta,
    )


@corrupt_file_errors
def dicom_frame_count(path: Path) -> int:
    """NumberOfFrames from the header only (1 when absent)."""
    ds = read_dataset(path, stop_before_pixels=True)
    return int(ds.get("NumberOfFrames", 1) or 1)
