"""DICOM via pydicom: single images, multi-frame files and series folders.

Intensities go through pydicom's own ``apply_modality_lut`` (Rescale
Slope/Intercept or a Modality LUT), so CT comes out in Hounsfield units;
enhanced multi-frame files carry the rescale per frame in functional groups,
which we hand to the same function. Compressed transfer syntaxes are decoded
by pydicom's plugins (pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS,
pylibjpeg-rle / pydicom for RLE, Pillow for baseline JPEG); if none is
installed for a file we say which package to install.

Geometry follows the DICOM patient coordinate system (LPS). A series is sorted
by each slice's ImagePositionPatient projected on the slice normal
(row direction x column direction of ImageOrientationPatient) -- never by file
name, which is often not in anatomical order -- with InstanceNumber as a
warned fallback. Voxel order of the resulting volume is (column, row, slice),
the ITK/NIfTI convention, and the affine is converted LPS -> RAS so it can be
written to NIfTI unchanged.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .errors import ImageReadError, MissingCodecError
from .limits import check_array_size

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Which pip packages give pydicom a decoder, per compressed transfer syntax.
_J2K = "pip install pylibjpeg pylibjpeg-openjpeg"
_JLS = "pip install pyjpegls  (or: pip install pylibjpeg pylibjpeg-libjpeg, GPL-3.0)"
_JPEG_LOSSLESS = "pip install python-gdcm  (or: pip install pylibjpeg pylibjpeg-libjpeg, GPL-3.0)"
_CODEC_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.92": _J2K,
    "1.2.840.10008.1.2.4.93": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,  # HTJ2K
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.4.80": _JLS,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": _JLS,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.50": "pip install pillow  (or: pip install pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.51": "pip install pillow  (or: pip install pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.57": _JPEG_LOSSLESS,  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": _JPEG_LOSSLESS,  # JPEG lossless SV1
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
_GENERIC_CODEC_HINT = "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls python-gdcm"

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# What pydicom raises when a lazily parsed element of a corrupt file is first read (a value that
# does not convert, a length past the end, an unknown VR): the file's fault wherever it surfaces.
CORRUPT_ELEMENT_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
    EOFError,
    UnicodeError,
    struct.error,
    RuntimeError,  # pydicom's BytesLengthException (a value whose length fits no VR), RecursionError
)


def corrupt_file_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Readers taking ``path`` first: a pydicom error on a corrupt element becomes an :class:`ImageReadError`."""

    @functools.wraps(fn)
    def reader(path: Path, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(path, *args, **kwargs)
        except ImageReadError:
            raise
        except Exception as exc:
            # pydicom's own exceptions (BytesLengthException, InvalidDicomError, ...) derive from Exception
            if not isinstance(exc, CORRUPT_ELEMENT_ERRORS) and not type(exc).__module__.startswith("pydicom"):
                raise
            raise ImageReadError(
                path,
                f"corrupt DICOM data ({type(exc).__name__}: {exc})",
                "the file is damaged or not standard DICOM; re-export it",
            ) from exc

    return reader


def codec_hint(transfer_syntax_uid: str) -> str:
    """The pip command that installs a decoder for ``transfer_syntax_uid``."""
    return _CODEC_HINTS.get(str(transfer_syntax_uid), _GENERIC_CODEC_HINT)


def is_dicom_file(path: Path) -> bool:
    """True if the file has the DICM preamble (cheap; no parsing)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dataset(path: Path, *, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with errors turned into :class:`ImageReadError`.

    Files without the 128-byte preamble (old ACR-NEMA style exports) are
    retried with ``force=True`` and accepted if they contain image attributes.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as first:
        sop = None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "Rows" in ds and "Columns" in ds:
                logger.warning("%s has no DICOM preamble/file meta; read with force=True", path)
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    from pydicom.uid import ImplicitVRLittleEndian

                    ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                return ds
            if "SOPClassUID" in ds:
                sop = getattr(ds.SOPClassUID, "name", None)
        except Exception:  # noqa: BLE001 - the forced read is only a second chance; report the first error
            logger.debug("forced read of %s failed too", path, exc_info=True)
        if sop:
            raise ImageReadError(
                path, f"DICOM file without an image (it is a {sop})", "pass an image DICOM file or series"
            ) from first
        raise ImageReadError(
            path,
            "not a valid DICOM file (no DICM header and no image attributes)",
            "check that the file is a complete DICOM image",
        ) from first
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on truncated/corrupt input
        raise ImageReadError(
            path, f"corrupt or truncated DICOM file ({type(exc).__name__}: {exc})", "re-export or re-download the file"
        ) from exc


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def decode_pixels(ds, path: Path) -> np.ndarray:
    """``ds.pixel_array`` with a clear error when the codec or the data is missing."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = getattr(sop, "name", None) or "non-image object"
        raise ImageReadError(
            path, f"DICOM file has no pixel data (it is a {kind})", "pass an image DICOM file or series"
        )
    ts = _transfer_syntax(ds)
    if ts is not None and not ts.is_transfer_syntax:
        raise ImageReadError(
            path,
            f"the file meta's transfer syntax '{ts}' is not a DICOM transfer syntax UID",
            "the file header is corrupt; re-export the file",
        )
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise MissingCodecError(
                path, f"pydicom has no decoder for transfer syntax '{ts.name}' ({ts})", codec_hint(ts)
            ) from exc
        if not decoder.is_available:
            raise MissingCodecError(
                path,
                f"pixel data is compressed as '{ts.name}' and no installed decoder supports it "
                f"({'; '.join(decoder.missing_dependencies)})",
                codec_hint(ts),
            )
    check_array_size(
        path, declared_shape(ds, path), max(4.0, _int_tag(ds, "BitsAllocated", 16, path) / 8), "pixel array"
    )
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom/plugins raise Runtime/Value/Key errors
        text = str(exc)
        if ts is not None and ts.is_compressed and ("missing dependencies" in text or "plugin" in text.lower()):
            raise MissingCodecError(path, f"cannot decode '{ts.name}' pixel data ({text})", codec_hint(ts)) from exc
        raise ImageReadError(
            path,
            f"pixel data could not be decoded ({type(exc).__name__}: {text})",
            "the file may be truncated or corrupt; re-export it",
        ) from exc
    except BaseException as exc:
        # Decoders written in Rust (pylibjpeg-rle) panic on corrupt data; pyo3's PanicException is a
        # BaseException so that `except Exception` cannot swallow it. It is still the file's fault.
        if type(exc).__name__ != "PanicException":
            raise
        raise ImageReadError(
            path,
            f"the pixel data decoder failed on this file ({str(exc).splitlines()[0] if str(exc) else 'panic'})",
            "the compressed pixel data is corrupt; re-export the file",
        ) from exc


def _int_tag(ds, tag: str, default: int, path: Path) -> int:
    """An integer header value (a corrupt one is the file's fault, said with the tag's name)."""
    try:
        value = ds.get(tag, default)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageReadError(path, f"the header's {tag} is not a number ({exc})", "the file is corrupt") from exc


def declared_shape(ds, path: Path) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples) as the header declares them, before decoding anything."""
    return (
        _int_tag(ds, "NumberOfFrames", 1, path) or 1,
        _int_tag(ds, "Rows", 0, path),
        _int_tag(ds, "Columns", 0, path),
        _int_tag(ds, "SamplesPerPixel", 1, path) or 1,
    )


def floats_of(value: Any) -> list[float] | None:
    """DS/IS/MultiValue/sequence -> list of floats (None when absent or unparsable)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def first_window_of(ds) -> tuple[float, float] | None:
    c, w = floats_of(ds.get("WindowCenter")), floats_of(ds.get("WindowWidth"))
    if c and w and w[0] > 0:
        return c[0], w[0]
    return None


def pixel_spacing_of(ds) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        v = floats_of(ds.get(tag))
        if v and len(v) == 2 and all(x > 0 for x in v):
            return v[0], v[1]
    return None


def basic_meta_of(ds) -> dict[str, Any]:
    ts = _transfer_syntax(ds)
    meta: dict[str, Any] = {
        "modality": ds.get("Modality"),
        "photometric": ds.get("PhotometricInterpretation"),
        "transfer_syntax": getattr(ts, "name", None),
        "sop_class": getattr(ds.get("SOPClassUID"), "name", None),
        "series_uid": ds.get("SeriesInstanceUID"),
        "series_description": ds.get("SeriesDescription"),
        "bits_stored": ds.get("BitsStored"),
    }
    for tag in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if tag in ds:
            meta[tag] = ds.get(tag)
    window = first_window_of(ds)
    if window:
        meta["window_center_width"] = window
    return meta


def _to_rgb_from_color(arr: np.ndarray, ds) -> np.ndarray:
    """Palette/colour DICOM -> (…, 3) RGB, uint8 when the data is 8-bit (palette LUTs: 16-bit entries scaled)."""
    from pydicom.pixels import apply_color_lut

    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            rgb = np.rint(rgb.astype(np.float32) / 257.0).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
        return rgb
    return arr


@dataclass
class DicomImage:
    """One 2D DICOM image: ``pixels`` after the modality LUT (e.g. HU) or RGB."""

    pixels: np.ndarray
    spacing: tuple[float, float] | None
    modality: str | None
    invert: bool
    source_bits: int | None
    file_window: tuple[float, float] | None
    meta: dict[str, Any] = field(default_factory=dict)


@corrupt_file_errors
def read_dicom_image(path: Path) -> DicomImage:
    """A single-frame DICOM file as a 2D image (multi-frame files are volumes)."""
    from pydicom.pixels import apply_modality_lut

    ds = read_dataset(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"multi-frame DICOM with {frames} frames is a volume, not a 2D image",
            "use medsam3.io.load_volume() (is_volume_path() tells them apart)",
        )
    arr = decode_pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    meta = basic_meta_of(ds)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) or photometric == "PALETTE COLOR":
        pixels = _to_rgb_from_color(arr, ds)
        if pixels.ndim == 3 and pixels.shape[-1] == 4:
            pixels = pixels[..., :3]
        invert = False
    else:
        pixels = apply_modality_lut(arr, ds).astype(np.float32)
        invert = photometric == "MONOCHROME1"
    bits = ds.get("BitsStored") or ds.get("BitsAllocated")
    return DicomImage(
        pixels=pixels,
        spacing=pixel_spacing_of(ds),
        modality=ds.get("Modality"),
        invert=invert,
        source_bits=int(bits) if bits else None,
        file_window=first_window_of(ds),
        meta=meta,
    )
