"""What a batch reads: which files an ``--input-dir`` names, their output folder names, and loading one.

A folder gives its images, DICOM files and DICOM-series sub-folders (not recursive); a glob pattern
or a text file of paths gives exactly what it names. Inputs are 2D images or volumes, whichever the
path is (:func:`load_input`).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputNotFoundError, UserError
from ..io import Image2D, Volume, is_volume_path, load_image2d, load_volume
from ..io.dicom import is_dicom_file
from ..io.formats import SUPPORTED_EXTENSIONS, extension
from ..io.windows import WindowSpec
from ..outputs import prompt_slug

__all__ = ["LoadedInput", "discover_inputs", "input_name", "load_input", "output_names"]

logger = logging.getLogger(__name__)

_LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")
_GLOB_CHARS = set("*?[")


@dataclass
class LoadedInput:
    path: Path
    image: Image2D | None = None
    volume: Volume | None = None

    @property
    def kind(self) -> str:
        return "volume" if self.volume is not None else "image"


def looks_like_dicom_folder(folder: Path) -> bool:
    """Some of the first files (else of the sub-folders' files) are DICOM: a series, not a folder of images."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")][:20]
    if not files:
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")][:20]
    return any(extension(p) in (".dcm", ".dicom", ".dic", ".ima") or is_dicom_file(p) for p in files)


def _scan_dir(folder: Path, exclude: Path | None) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or (exclude is not None and p.resolve() == exclude):
            continue
        if p.is_dir():
            if looks_like_dicom_folder(p):
                out.append(p)  # a DICOM series
            else:
                logger.info("skipping folder %s: no DICOM files in it (use a glob for nested images)", p)
        elif extension(p) in SUPPORTED_EXTENSIONS or (p.suffix == "" and is_dicom_file(p)):
            out.append(p)
        else:
            logger.debug("skipping %s: not an image extension", p)
    return out


def discover_inputs(spec: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """The inputs named by ``spec``: a folder (its images, DICOM files and DICOM series
    sub-folders, not recursive), a glob pattern (``**`` recurses), or a text file with one path per
    line (``#`` comments; relative paths are tried from the current folder, then from the list's
    folder). Listed paths that do not exist are kept, so the batch reports them as failures.
    """
    text = str(spec)
    excluded = Path(exclude).resolve() if exclude is not None else None
    path = Path(text).expanduser()
    if path.is_dir():
        found = _scan_dir(path, excluded)
        where = f"folder {path}"
    elif path.is_file() and (
        extension(path) in _LIST_SUFFIXES or (extension(path) not in SUPPORTED_EXTENSIONS and not is_dicom_file(path))
    ):
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--input-dir {path}: not a folder, an image or a text file of paths ({exc})") from None
        found = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            item = Path(line).expanduser()
            if not item.is_absolute() and not item.exists() and (path.parent / item).exists():
                item = path.parent / item
            found.append(item)
        where = f"list {path}"
    elif _GLOB_CHARS & set(text):
        found = [
            Path(p)
            for p in sorted(glob.glob(text, recursive=True))
            if not Path(p).name.startswith(".") and (Path(p).is_file() or Path(p).is_dir())
        ]
        where = f"pattern {text!r}"
    elif path.is_file():
        found, where = [path], str(path)
    else:
        raise InputNotFoundError(f"--input-dir {text}: no such folder, list file or matching files")
    if not found:
        raise InputNotFoundError(
            f"no images or volumes found in {where} (supported: "
            f"{', '.join(sorted(set(SUPPORTED_EXTENSIONS)))}, DICOM series folders)"
        )
    return found


def input_name(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", *SUPPORTED_EXTENSIONS):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return prompt_slug(name) if name else "input"


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct, stable output folder name per input (file name without extension; repeats get
    the extension, then a counter)."""
    names: list[str] = []
    used: set[str] = set()
    for p in paths:
        base = input_name(p)
        name = base
        if name in used:
            name = f"{base}_{prompt_slug(extension(p).lstrip('.'))}" if extension(p) else base
        counter = 2
        while name in used:
            name = f"{base}_{counter}"
            counter += 1
        used.add(name)
        names.append(name)
    return names


def load_input(path: str | Path, window: WindowSpec = None, volume_index: int | None = None) -> LoadedInput:
    """Read an image or a volume (whichever the path is); raises ImageReadError when it cannot."""
    path = Path(path)
    if is_volume_path(path):
        return LoadedInput(path, volume=load_volume(path, window, volume_index))
    if volume_index not in (None, 0):
        raise UserError(f"--volume-index applies to 4D NIfTI volumes, and {path} is a 2D image")
    return LoadedInput(path, image=load_image2d(path, window))
