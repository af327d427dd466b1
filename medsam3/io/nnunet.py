"""nnU-Net v2 raw and Medical Segmentation Decathlon (MSD) dataset folders: cases, channels, labels.

What a folder holds (``DatasetNNN_Name/``)::

    dataset.json                   # nnU-Net v2: channel_names, labels (name -> value or [values]), file_ending
                                   # MSD: modality, labels (value -> name), training [{image, label}], test
    imagesTr/<case>_<XXXX><ending> # one file per channel (nnU-Net); MSD: one (4D) file per case
    labelsTr/<case><ending>        # integer label map on the image's grid
    imagesTs/, labelsTs/           # optional: test cases, labelled when labelsTs has them

Rules, as nnU-Net reads them:

* A label given as a list of values is a *region*: the concept is their union (BraTS "tumor core" =
  [2, 3]). ``background`` (value 0) is never a concept; nnU-Net's ``ignore`` label marks unannotated
  pixels: allowed in label maps, never a concept.
* Channels: nnU-Net v2 keeps one file per channel (``_0000``, ``_0001``, ...); a 2D colour file
  (PNG/TIFF) holding all three channels of ``channel_names`` R, G, B counts as those channels.
  MSD keeps several channels as the 4th axis of one NIfTI file.
* Images are read by :mod:`medsam3.io`'s readers, exactly as ``infer_sam.py`` reads the same file;
  only a channel named ``CT`` (nnU-Net's own CT normalisation key) declares the modality.
* Label maps must match the image: same shape, and for volumes the same affine (to 1e-3 mm).
  Any value that ``dataset.json`` does not name is an error naming the case and the values.

A leaf of :mod:`medsam3.io`: every problem is a :class:`DatasetFolderError` (a ``UserError``)
that names the dataset, the case and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .api import Image2D, load_image2d, load_volume
from .formats import RASTER_FORMATS, detect_format
from .images import read_raster
from .itk import read_itk
from .volume import Volume

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "DatasetCase",
    "DatasetFolder",
    "DatasetFolderError",
    "LabelConcept",
    "read_case_image",
    "read_case_labels",
    "read_dataset",
]

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
_IGNORE = "ignore"
_RGB_NAMES = ("r", "g", "b")
_2D_ENDINGS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class DatasetFolderError(UserError):
    """An nnU-Net / MSD folder (or one of its cases) cannot be read as the format says."""


@dataclass(frozen=True)
class LabelConcept:
    """A concept of the dataset: its name and the label values whose union it is."""

    name: str
    values: tuple[int, ...]

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the concept in a label map (the region's union)."""
        return np.isin(labels, self.values)


@dataclass(frozen=True)
class DatasetCase:
    """One case: its channel files (or one 4D file with ``channel_axis``), its label map if any."""

    name: str
    subset: str  # "imagesTr" or "imagesTs"
    images: tuple[Path, ...]
    label: Path | None
    four_d: bool = False  # MSD: channels are the 4th axis of images[0]

    @property
    def case_id(self) -> str:
        return self.name


@dataclass
class DatasetFolder:
    """A parsed ``dataset.json`` and the cases it describes."""

    root: Path
    kind: str  # "nnunet" or "msd"
    metadata: dict[str, Any]
    channels: list[str]
    concepts: list[LabelConcept]
    allowed_values: frozenset[int]
    file_ending: str
    cases: list[DatasetCase] = field(default_factory=list)

    @property
    def is_2d(self) -> bool:
        return self.file_ending.lower() in _2D_ENDINGS

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.root.name)

    def channel_index(self, channel: int | str | None) -> int:
        """0-based channel from an index or a name (case-insensitive); default the first."""
        if channel is None:
            return 0
        text = str(channel).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if 0 <= index < len(self.channels):
                return index
        else:
            names = [c.lower() for c in self.channels]
            if text.lower() in names:
                return names.index(text.lower())
        choices = ", ".join(f"{i} ({n})" for i, n in enumerate(self.channels))
        raise DatasetFolderError(f"{self.root}: no channel {channel!r}; choose one of {choices}")

    def modality(self, channel: int) -> str | None:
        """'CT' when the channel is named CT (nnU-Net's CT normalisation), else None (decided from the data)."""
        return "CT" if self.channels[channel].strip().upper() == "CT" else None

    def source_info(self) -> dict[str, Any]:
        """dataset.json's descriptive fields (name, licence, reference, ...), not the file lists."""
        skip = {"training", "test", "dataset"}
        return {k: v for k, v in self.metadata.items() if k not in skip}


def _fail(where: Path | str, problem: str, fix: str) -> DatasetFolderError:
    return DatasetFolderError(f"{where}: {problem}. Fix: {fix}")


def _as_values(name: str, value: Any, where: Path) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        values = tuple(int(v) for v in items)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise _fail(where, f"label {name!r} has value {value!r}", "give an integer or a list of integers") from None
    if not values or any(v < 0 for v in values):
        raise _fail(where, f"label {name!r} has value {value!r}", "label values are integers >= 0")
    return values


def _parse_labels(raw: Any, where: Path) -> tuple[list[LabelConcept], frozenset[int]]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, "has no 'labels'", 'add e.g. "labels": {"background": 0, "liver": 1}')
    if all(str(k).strip().lstrip("-").isdigit() for k in raw):  # MSD: value -> name
        pairs = [(str(name), (int(k),)) for k, name in raw.items()]
    else:  # nnU-Net v2: name -> value or region
        pairs = [(str(name), _as_values(str(name), v, where)) for name, v in raw.items()]
    concepts, allowed = [], {0}
    for name, values in pairs:
        allowed.update(values)
        if name.strip().lower() in ("background", _IGNORE) or values == (0,):
            continue
        concepts.append(LabelConcept(" ".join(name.split()), values))
    if not concepts:
        raise _fail(where, "names no label besides background", "add the structures' labels to 'labels'")
    return concepts, frozenset(allowed)


def _channel_names(meta: dict[str, Any], where: Path) -> list[str]:
    raw = meta.get("channel_names", meta.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise _fail(
            where, "has no 'channel_names' (nnU-Net v2) or 'modality' (MSD)", 'add "channel_names": {"0": "CT"}'
        )
    try:
        ordered = sorted(raw.items(), key=lambda kv: int(kv[0]))
    except ValueError:
        raise _fail(where, f"channel keys {list(raw)} are not 0, 1, ...", "number the channels from 0") from None
    if [int(k) for k, _ in ordered] != list(range(len(ordered))):
        raise _fail(where, f"channel keys {list(raw)} are not 0, 1, ...", "number the channels from 0")
    return [str(v) for _, v in ordered]


def _case_name(path: Path, ending: str) -> str:
    return path.name[: -len(ending)] if path.name.endswith(ending) else path.name


def _nnunet_cases(root: Path, channels: list[str], ending: str, is_2d: bool) -> list[DatasetCase]:
    cases: list[DatasetCase] = []
    rgb_in_one = is_2d and [c.strip().lower() for c in channels] == list(_RGB_NAMES)
    for subset, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        images_dir = root / subset
        if not images_dir.is_dir():
            continue
        files = sorted(p for p in images_dir.iterdir() if p.name.endswith(ending))
        unsuffixed = [p.name for p in files if not re.search(r"_\d{4}$", _case_name(p, ending))]
        if unsuffixed:
            raise _fail(
                root,
                f"{subset}/{unsuffixed[0]} has no channel suffix _0000, _0001, ... before {ending}",
                f"rename it to <case>_0000{ending} (nnU-Net v2 names one file per channel)",
            )
        names = sorted({_case_name(p, ending)[:-5] for p in files})
        labelled = {_case_name(p, ending) for p in (root / labels_dir).glob(f"*{ending}")}
        for name in names:
            files = [images_dir / f"{name}_{i:04d}{ending}" for i in range(len(channels))]
            missing = [f for f in files if not f.is_file()]
            if missing and rgb_in_one and files[0].is_file() and all(not f.is_file() for f in files[1:]):
                files, missing = files[:1], []  # R, G, B in one colour file (checked when read)
            if missing:
                raise _fail(
                    root,
                    f"case {name}: channel file {missing[0].relative_to(root)} is missing "
                    f"(dataset.json names {len(channels)} channel(s): {', '.join(channels)})",
                    "add the file, or remove the case's other channel files",
                )
            label = root / labels_dir / f"{name}{ending}" if name in labelled else None
            if subset == "imagesTr" and label is None:
                raise _fail(
                    root, f"case {name} has no label map {labels_dir}/{name}{ending}", "add it or remove the case"
                )
            cases.append(DatasetCase(name, subset, tuple(files), label))
        stray = sorted(labelled - set(names))
        if stray:
            raise _fail(root, f"{labels_dir} has label maps without images: {', '.join(stray[:5])}", "remove them")
    return cases


def _msd_path(root: Path, entry: Any, where: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise _fail(root / "dataset.json", f"{where}: expected a file path, got {entry!r}", "fix the entry")
    return Path(os.path.normpath(root / entry))


def _msd_cases(root: Path, meta: dict[str, Any], n_channels: int) -> list[DatasetCase]:
    cases: list[DatasetCase] = []
    for i, entry in enumerate(meta.get("training") or []):
        if not isinstance(entry, dict):
            raise _fail(root / "dataset.json", f"training[{i}] is not an object", 'use {"image": ..., "label": ...}')
        image = _msd_path(root, entry.get("image"), f"training[{i}].image")
        label = _msd_path(root, entry.get("label"), f"training[{i}].label")
        cases.append(DatasetCase(_case_name(image, ".nii.gz"), "imagesTr", (image,), label, four_d=n_channels > 1))
    for i, entry in enumerate(meta.get("test") or []):
        image = _msd_path(root, entry.get("image") if isinstance(entry, dict) else entry, f"test[{i}]")
        label = (
            _msd_path(root, entry["label"], f"test[{i}].label")
            if isinstance(entry, dict) and entry.get("label")
            else None
        )
        cases.append(DatasetCase(_case_name(image, ".nii.gz"), "imagesTs", (image,), label, four_d=n_channels > 1))
    for case in cases:
        for path in (*case.images, case.label):
            if path is not None and not path.is_file():
                raise _fail(root, f"case {case.name}: {path} does not exist", "fix the path in dataset.json")
    return cases


def read_dataset(root: str | Path) -> DatasetFolder:
    """Parse ``root/dataset.json`` (nnU-Net v2 or MSD) and list its cases; nothing is read yet."""
    root = Path(root).expanduser()
    where = root / "dataset.json"
    if not where.is_file():
        raise _fail(root, "no dataset.json", "give the dataset folder (DatasetNNN_Name) that holds dataset.json")
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(where, f"is not readable JSON ({exc})", "fix the file") from None
    if not isinstance(meta, dict):
        raise _fail(where, "is not a JSON object", "see nnU-Net's dataset_format.md")
    channels = _channel_names(meta, where)
    concepts, allowed = _parse_labels(meta.get("labels"), where)
    if "training" in meta:
        kind, ending = "msd", ".nii.gz"
        cases = _msd_cases(root, meta, len(channels))
    else:
        kind = "nnunet"
        ending = meta.get("file_ending")
        if not isinstance(ending, str) or not ending.startswith("."):
            raise _fail(where, f"'file_ending' is {ending!r}", 'add e.g. "file_ending": ".nii.gz"')
        cases = _nnunet_cases(root, channels, ending, ending.lower() in _2D_ENDINGS)
    if not cases:
        raise _fail(root, "holds no cases (imagesTr is empty or missing)", "put <case>_0000<ending> files in imagesTr")
    dataset = DatasetFolder(root, kind, meta, channels, concepts, allowed, ending, cases)
    logger.info(
        "%s: %s dataset, %d case(s), channels %s, concepts %s",
        root,
        kind,
        len(cases),
        channels,
        [c.name for c in concepts],
    )
    return dataset


def read_case_image(
    dataset: DatasetFolder, case: DatasetCase, channel: int = 0, window: Any = None
) -> Volume | Image2D:
    """The case's image for ``channel``, read as ``infer_sam.py`` reads that file (a Volume or an Image2D)."""
    if case.four_d:
        return load_volume(case.images[0], window, volume_index=channel, modality=dataset.modality(channel))
    path = case.images[min(channel, len(case.images) - 1)]
    if detect_format(path) in RASTER_FORMATS:
        image = load_image2d(path, window)
        if len(case.images) == 1 and len(dataset.channels) == 3 and image.raw.ndim != 3:
            raise _fail(
                dataset.root,
                f"case {case.name}: {path.name} is greyscale, but dataset.json names 3 channels "
                f"({', '.join(dataset.channels)}) and {case.name}_0001/_0002 are missing",
                "add the missing channel files, or save the image as one RGB file",
            )
        return image
    return load_volume(path, window, modality=dataset.modality(channel))


def _read_label_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(integer array, affine or None for 2D files)."""
    fmt = detect_format(path)
    if fmt in RASTER_FORMATS:
        pixels = read_raster(path, fmt).pixels
        return pixels, None
    if fmt == "itk":
        vol = read_itk(path)
        return vol.data, vol.affine
    if fmt != "nifti":
        raise _fail(path, f"label maps in {fmt} format are not read", "save label maps like the images")
    import nibabel as nib

    img = nib.load(path)
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    while data.ndim < 3:
        data = data[..., None]
    return data, np.asarray(img.affine, dtype=np.float64)


def read_case_labels(dataset: DatasetFolder, case: DatasetCase, image: Volume | Image2D) -> np.ndarray:
    """The case's label map on the image's grid (voxel order for volumes, file order for 2D images).

    Raises :class:`DatasetFolderError` naming the case when shape or affine differ from the image,
    or when it holds values that ``dataset.json`` does not name.
    """
    if case.label is None:
        raise _fail(dataset.root, f"case {case.name} has no label map", "evaluate or import labelled cases only")
    data, affine = _read_label_array(case.label)
    if data.ndim == 3 and isinstance(image, Image2D):
        raise _fail(
            case.label, f"case {case.name}: a colour or 3D label map {data.shape}", "save one integer per pixel"
        )
    shape = image.rgb.shape[:2] if isinstance(image, Image2D) else image.shape
    if tuple(data.shape) != tuple(shape):
        raise _fail(
            case.label,
            f"case {case.name}: label map of shape {tuple(data.shape)} but image of shape {tuple(shape)}",
            "the label map must be on the image's pixel grid (same size, same orientation)",
        )
    if affine is not None and isinstance(image, Volume):
        diff = float(np.max(np.abs(affine - image.affine)))
        if diff > AFFINE_TOLERANCE_MM:
            raise _fail(
                case.label,
                f"case {case.name}: label map and image have different affines (up to {diff:.3g} mm apart)",
                "resample the label map onto the image grid, or copy the image's header to it",
            )
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise _fail(case.label, f"case {case.name}: non-integer label values", "store integer labels")
    elif data.dtype.kind not in "iub":
        raise _fail(case.label, f"case {case.name}: label dtype {data.dtype}", "store integer labels")
    labels = data.astype(np.int64)
    unknown = sorted(set(np.unique(labels).tolist()) - dataset.allowed_values)
    if unknown:
        raise _fail(
            case.label,
            f"case {case.name}: label value(s) {unknown[:10]} are not named in dataset.json 'labels' "
            f"(named: {sorted(dataset.allowed_values)})",
            "add them to 'labels' in dataset.json, or relabel the map",
        )
    return labels
