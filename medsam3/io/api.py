"""The public entry points: any supported path -> model-ready uint8 RGB.

``read_rgb`` / ``load_image2d`` for 2D inputs, ``load_volume`` for NIfTI and
DICOM volumes, ``is_volume_path`` to tell them apart. The intensity choice
(CT window / percentiles / unchanged) is logged at INFO level so a run log
says how every input was displayed to the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .dicom import read_dicom_image
from .dicom_volume import dicom_frame_count, read_dicom_multiframe, read_dicom_series
from .errors import ImageReadError
from .formats import RASTER_FORMATS, check_exists, detect_format
from .images import AlphaMode, read_raster
from .itk import read_itk
from .nifti import read_nifti
from .volume import Volume
from .windows import WindowSpec, choose_intensity, looks_like_hu, parse_window

logger = logging.getLogger(__name__)

PathLikeStr = str | PathLike[str]


@dataclass
class Image2D:
    """A 2D input ready for the model.

    Attributes:
        rgb: uint8 (H, W, 3) -- what the model sees.
        raw: the original intensities: HU (float32) for CT DICOM, stored values
            for PNG/TIFF (uint8/uint16/float), (H, W, 3) for colour inputs.
        spacing: (row, column) pixel size in mm when the file says so (DICOM), else None.
        intensity: how ``raw`` became ``rgb`` (e.g. "CT window soft_tissue (L40 W400)").
        meta: reader details (format, mode, modality, EXIF orientation, alpha handling, ...).
        path: the file it came from.
    """

    rgb: np.ndarray
    raw: np.ndarray
    spacing: tuple[float, float] | None
    intensity: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _to_rgb(gray_or_rgb: np.ndarray) -> np.ndarray:
    if gray_or_rgb.ndim == 2:
        return np.repeat(gray_or_rgb[..., None], 3, axis=-1)
    return np.ascontiguousarray(gray_or_rgb[..., :3])


def load_image2d(
    path: PathLikeStr, window: WindowSpec = None, *, alpha: AlphaMode = "composite", log_level: int = logging.INFO
) -> Image2D:
    """Read a 2D image (PNG/JPEG/BMP/TIFF, single-frame DICOM) and map it to uint8 RGB.

    Args:
        path: the file.
        window: None/"auto" chooses from metadata (CT -> soft-tissue window,
            8-bit -> unchanged, otherwise percentile scaling); or a preset name
            ("lung", "bone", ...), "percentile", "dicom" (the file's own window),
            or a (level, width) tuple.
        alpha: RGBA inputs: "composite" over black (default) or "drop" the alpha channel.
        log_level: of the line saying how intensities were mapped (DEBUG where a loop reads many
            images, e.g. the training data loader).

    Raises:
        ImageReadError (or a subclass) naming the path, the problem and the fix.
    """
    parse_window(window)  # fail on a bad window before reading anything
    p = check_exists(path)
    fmt = detect_format(p)
    if fmt == "dicom_dir":
        raise ImageReadError(
            p,
            "is a folder (a DICOM series is a volume), not a 2D image",
            "use medsam3.io.load_volume(); is_volume_path() tells them apart",
        )
    if fmt in ("nifti", "itk"):
        raise ImageReadError(p, "is a volume, not a 2D image", "use medsam3.io.load_volume() and Volume.slices_rgb()")
    if fmt == "dicom":
        d = read_dicom_image(p)
        raw, spacing, meta = d.pixels, d.spacing, dict(d.meta)
        mapping = choose_intensity(
            raw,
            window=window,
            modality=d.modality,
            invert=d.invert,
            source_bits=d.source_bits,
            file_window=d.file_window,
        )
    elif fmt in RASTER_FORMATS:
        r = read_raster(p, fmt, alpha=alpha)
        raw, spacing, meta = r.pixels, None, dict(r.meta)
        signed_or_float = raw.dtype.kind in "if"
        mapping = choose_intensity(
            raw,
            window=window,
            is_hu=looks_like_hu(raw) if signed_or_float and raw.ndim == 2 else False,
            invert=r.invert,
            source_bits=r.bits,
        )
    else:  # pragma: no cover - detect_format only returns the formats above
        raise ImageReadError(p, f"unexpected format {fmt}")
    rgb = _to_rgb(mapping.apply(raw))
    meta.update(format_detected=fmt, intensity_kind=mapping.kind)
    logger.log(log_level, "%s: %s", p, mapping.description)
    return Image2D(rgb=rgb, raw=raw, spacing=spacing, intensity=mapping.description, meta=meta, path=p)


def read_rgb(path: PathLikeStr, window: WindowSpec = None) -> np.ndarray:
    """Any 2D input file -> uint8 (H, W, 3), the array the predictor consumes.

    See :func:`load_image2d` for ``window``; the intensity choice is logged at INFO.
    """
    return load_image2d(path, window).rgb


def load_volume(
    path: PathLikeStr,
    window: WindowSpec = None,
    volume_index: int | None = None,
    *,
    modality: str | None = None,
    series_uid: str | None = None,
) -> Volume:
    """Read a 3D volume: NIfTI (.nii/.nii.gz, 3D or one volume of a 4D file), MetaImage/NRRD
    (.mha/.mhd/.nrrd/.nhdr, with SimpleITK),
    a DICOM series folder, or a (multi-frame) DICOM file.

    Args:
        window: as in :func:`load_image2d`; the mapping is computed once from the
            whole volume so every slice gets the same contrast.
        volume_index: 0-based volume of a 4D NIfTI (required when it has > 1).
        modality: override/declare the modality ("CT" forces HU handling for a
            NIfTI whose intensities were not recognised as HU).
        series_uid: which series to read when a DICOM folder holds several.
    """
    parse_window(window)
    p = check_exists(path)
    fmt = detect_format(p)
    if fmt in RASTER_FORMATS:
        raise ImageReadError(
            p, f"is a 2D {fmt.upper()} image, not a volume", "use medsam3.io.read_rgb() / load_image2d()"
        )
    modality_source = "argument" if modality else None
    header = None
    if fmt in ("nifti", "itk"):
        nv = read_nifti(p, volume_index) if fmt == "nifti" else read_itk(p, volume_index)
        data, affine, spacing, meta, header = nv.data, nv.affine, nv.spacing, nv.meta, nv.header
        invert, file_window, file_modality = False, None, None
    else:
        if volume_index not in (None, 0):
            raise ImageReadError(p, f"volume_index={volume_index} only applies to 4D NIfTI files", "omit volume_index")
        dv = read_dicom_series(p, series_uid=series_uid) if fmt == "dicom_dir" else read_dicom_multiframe(p)
        data, affine, spacing, meta = dv.data, dv.affine, dv.spacing, dv.meta
        invert, file_window, file_modality = dv.invert, dv.file_window, dv.modality
    if modality is None and file_modality:
        modality, modality_source = str(file_modality).upper(), "DICOM Modality"
    _check_finite(p, data)
    is_hu = None
    if modality is None and looks_like_hu(data):
        modality, modality_source, is_hu = "CT", "intensity heuristic (HU-like values)", True
    mapping = choose_intensity(
        data, window=window, modality=modality, is_hu=is_hu, invert=invert, file_window=file_window
    )
    meta = {**meta, "modality_source": modality_source, "format_detected": fmt}
    logger.info(
        "%s: volume %s, spacing %s mm, %s", p, data.shape, tuple(round(s, 4) for s in spacing), mapping.description
    )
    return Volume(
        data=data,
        affine=affine,
        spacing=tuple(spacing),
        modality=modality,
        intensity=mapping,
        path=p,
        meta=meta,
        header=header,  # type: ignore[arg-type]
    )


def _check_finite(path: Path, data: np.ndarray) -> None:
    """No finite voxel: nothing to segment (an error). Some NaN/inf: said, since they show as the darkest grey."""
    if not np.issubdtype(data.dtype, np.floating):
        return
    finite = np.isfinite(data)
    bad = data.size - int(np.count_nonzero(finite))
    if bad == 0:
        return
    if bad == data.size:
        raise ImageReadError(
            path, "every voxel is NaN or infinite", "check how the file was written (a failed resampling?)"
        )
    logger.warning(
        "%s: %d voxel(s) (%.2f%%) NaN or infinite; NaN shows as the window's minimum (black), +inf as its maximum",
        path,
        bad,
        100.0 * bad / data.size,
    )


def is_volume_path(path: PathLikeStr) -> bool:
    """True for inputs :func:`load_volume` should read: NIfTI files, folders
    (DICOM series) and multi-frame DICOM files. False for 2D files and for
    paths that do not exist or cannot be identified (reading them with
    :func:`read_rgb` then raises the explanatory error).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return True
    if not p.is_file():
        return False
    try:
        fmt = detect_format(p)
        if fmt in ("nifti", "itk"):
            return True
        if fmt == "dicom":
            return dicom_frame_count(p) > 1
    except ImageReadError as exc:
        logger.debug("is_volume_path(%s): %s", p, exc)
    return False
