"""Which reader handles a path: by extension first, then by magic bytes.

Extensions decide when they are known (so a corrupt ``.png`` is reported as a
corrupt PNG, not as "unsupported"); files without a known extension (DICOM
exports are often extension-less, e.g. ``IM000001``) are sniffed.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal

from .errors import ImageNotFoundError, ImageReadError, UnsupportedFormatError

Format = Literal["png", "jpeg", "bmp", "tiff", "dicom", "nifti", "itk", "dicom_dir"]

RASTER_FORMATS: frozenset[str] = frozenset({"png", "jpeg", "bmp", "tiff"})

_EXTENSIONS: dict[str, Format] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".jfif": "jpeg",
    ".bmp": "bmp",
    ".dib": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".dic": "dicom",
    ".ima": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".mha": "itk",  # MetaImage and NRRD volumes, read by SimpleITK (medsam3.io.itk)
    ".mhd": "itk",
    ".nrrd": "itk",
    ".nhdr": "itk",
}
# Formats people will try; tell them what to do instead of a bare "unsupported".
_KNOWN_UNSUPPORTED: dict[str, str] = {
    ".mgz": "FreeSurfer MGH",
    ".mgh": "FreeSurfer MGH",
    ".hdr": "Analyze/NIfTI pair",
    ".img": "Analyze/NIfTI pair",
    ".gif": "GIF",
    ".webp": "WebP",
    ".svs": "whole-slide image",
    ".ndpi": "whole-slide image",
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_EXTENSIONS)


def extension(path: Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one extension."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def sniff(path: Path) -> Format | None:
    """Format from the first bytes of the file, or None if unrecognised."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(
            path, f"the file cannot be opened ({exc.strerror or exc})", "check file permissions"
        ) from exc
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return "nifti"
    return None


def check_exists(path: str | PathLike[str]) -> Path:
    """``Path(path)`` if it exists, else :class:`ImageNotFoundError`."""
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent
        hint = (
            "check the path for typos"
            if parent.is_dir()
            else f"the folder '{parent}' does not exist either; check the path"
        )
        raise ImageNotFoundError(p, "no such file or folder", hint)
    return p


def detect_format(path: str | PathLike[str]) -> Format:
    """The reader to use for ``path`` (which must exist)."""
    p = check_exists(path)
    if p.is_dir():
        return "dicom_dir"
    ext = extension(p)
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    sniffed = sniff(p)
    if sniffed is not None:
        return sniffed
    supported = ", ".join(sorted(set(SUPPORTED_EXTENSIONS)))
    if ext in _KNOWN_UNSUPPORTED:
        raise UnsupportedFormatError(
            p,
            f"{_KNOWN_UNSUPPORTED[ext]} files ('{ext}') are not supported",
            f"convert it to NIfTI (.nii.gz) or PNG/TIFF first (e.g. with SimpleITK or 3D Slicer); "
            f"supported: {supported}",
        )
    what = (
        f"unsupported file extension '{ext}'" if ext else "no file extension and the content is not a recognised image"
    )
    raise UnsupportedFormatError(p, what, f"use one of {supported}, or a DICOM series folder")
