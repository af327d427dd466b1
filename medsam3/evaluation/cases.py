"""What is evaluated: options, cases and ground truth read from COCO files and label-map volumes.

The rules these follow are in the package docstring (:mod:`medsam3.evaluation`).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..data.coco_records import CocoRecords
from ..errors import UserError
from ..inference.postprocess3d import RecordedConcepts
from ..io import Volume
from ..io.windows import WindowSpec, parse_window

logger = logging.getLogger(__name__)

PROTOCOLS = ("text", "text+box")
METRICS = ("dice", "iou", "nsd", "hd95")
CSV_COLUMNS = (
    "case_id",
    "modality",
    "concept",
    "protocol",
    "threshold",
    "present",
    "dice",
    "iou",
    "nsd",
    "hd95",
    "gt_size_px",
    "pred_size_px",
    "gt_size_mm",
    "pred_size_mm",
    "spacing_mm",
    "prediction",
    "image",
    "label",
    "category_id",
)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_AFFINE_ATOL_MM = 1e-3


class EvaluationError(UserError):
    """The data set description or the options are unusable: nothing can be evaluated (CLI exit 2)."""


class CaseError(UserError):
    """One case cannot be evaluated (shape/affine mismatch, bad entry): reported, the rest go on."""


# --------------------------------------------------------------------------------------------- #
# Options and cases
# --------------------------------------------------------------------------------------------- #
# What ``--axis`` takes (as infer_sam.py; resolved per volume by inference.volume.resolve_axis).
SLICE_AXES = ("auto", "axial", "coronal", "sagittal", "0", "1", "2", "-1", "-2", "-3")


@dataclass(frozen=True)
class EvalOptions:
    """How cases are prompted and scored; validated once so a bad value stops before any work."""

    protocols: tuple[str, ...] = ("text",)
    thresholds: tuple[float, ...] = (0.5,)
    nms_iou: float | None = 0.5
    nsd_tolerance: float = 2.0
    include_absent: bool = False
    slice_batch: int | None = None  # None: 8 on CUDA, 1 on CPU
    axis: int | str = "auto"  # as inference.volume.resolve_axis: auto, axial/coronal/sagittal, or a voxel axis
    window: WindowSpec = None
    coco_map: bool = False
    largest_component: bool | tuple[str, ...] = False  # 3D, as infer_sam.py: True = every concept, else these
    fill_holes: bool = False  # 3D, as infer_sam.py
    per_concept_thresholds: bool = False  # the weights record one threshold per concept: each concept at its own

    def __post_init__(self) -> None:
        protocols = tuple(dict.fromkeys(self.protocols))
        bad = [p for p in protocols if p not in PROTOCOLS]
        if not protocols or bad:
            raise EvaluationError(f"unknown protocol(s) {bad or '[]'}; choose from {', '.join(PROTOCOLS)}")
        thresholds = tuple(sorted(dict.fromkeys(float(t) for t in self.thresholds)))
        if not thresholds or any(not (0.0 <= t <= 1.0) for t in thresholds):
            raise EvaluationError(f"thresholds must be in [0, 1], got {list(self.thresholds)}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise EvaluationError(f"nms_iou must be in (0, 1] (1 disables NMS), got {self.nms_iou}")
        if not (math.isfinite(self.nsd_tolerance) and self.nsd_tolerance > 0):
            raise EvaluationError(f"NSD tolerance must be a positive number of mm, got {self.nsd_tolerance}")
        if self.slice_batch is not None and self.slice_batch < 1:
            raise EvaluationError(f"slice batch must be >= 1, got {self.slice_batch}")
        if str(self.axis).strip().lower() not in SLICE_AXES:
            raise EvaluationError(f"slice axis must be auto, axial, coronal, sagittal or 0-2, got {self.axis!r}")
        try:
            parse_window(self.window)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc
        object.__setattr__(self, "protocols", protocols)
        object.__setattr__(self, "thresholds", thresholds)
        if not isinstance(self.largest_component, (bool, RecordedConcepts)):
            object.__setattr__(self, "largest_component", tuple(self.largest_component))

    @property
    def keep_threshold(self) -> float:
        """The one threshold the model runs with: every reported threshold is derived from it."""
        return self.thresholds[0]


@dataclass
class ImageCase:
    """One COCO image and the concepts to ask for on it."""

    case_id: str
    image_id: int
    image_path: Path
    categories: list[int]  # concept (smallest category) ids, in the set's concept order
    modality: str | None = None
    problem: str | None = None  # set when the image was found unusable while reading the set


@dataclass
class CocoSet:
    """A COCO split ready for evaluation: the cleaned records (:func:`medsam3.data.coco_records.read_coco`), cases."""

    records: CocoRecords
    prompts: dict[int, str]  # concept id -> prompt
    cases: list[ImageCase]

    def __post_init__(self) -> None:
        self._by_id = {rec.image_id: rec for rec in self.records.images}

    @property
    def annotation_file(self) -> Path:
        return self.records.annotation_file

    @property
    def image_root(self) -> Path:
        return self.records.image_root

    def frame(self, case: ImageCase) -> tuple[int, int]:
        """(height, width) of the image's annotation frame."""
        rec = self._by_id[case.image_id]
        return rec.height, rec.width

    def ground_truths(self, case: ImageCase) -> dict[int, np.ndarray]:
        """Per asked concept id: the union of its masks on the image (empty for an absent concept)."""
        rec = self._by_id[case.image_id]
        masks = self.records.semantic_masks(rec)
        empty = np.zeros((rec.height, rec.width), dtype=bool)
        return {c: masks.get(self.prompts[c], empty) for c in case.categories}


@dataclass
class VolumeCase:
    """One image volume (NIfTI file or DICOM series) with its label-map NIfTI."""

    case_id: str
    image_path: Path
    label_path: Path | None
    modality: str | None = None
    problem: str | None = None  # set when the case is known to be unusable before reading


@dataclass
class VolumeSet:
    """Volume cases plus the label value -> prompt mapping shared by all of them."""

    cases: list[VolumeCase]
    label_prompts: dict[int, str]


# --------------------------------------------------------------------------------------------- #
# Loading data set descriptions
# --------------------------------------------------------------------------------------------- #
def load_coco_set(
    annotation_file: str | Path,
    image_root: str | Path | None = None,
    *,
    include_absent: bool = False,
    modality: str | None = None,
) -> CocoSet:
    """Read a COCO file with the one reader training uses (same cleaning, merged duplicate prompts) into cases.

    A case is an image with at least one concept to ask: those with a mask on it, plus (with
    ``include_absent``) those without any annotation on it. ``image_root`` defaults to the JSON file's
    folder (Roboflow layout). Images the reader rejected (missing file, unknown size) become cases
    that fail with the reason. Raises a :class:`~medsam3.errors.UserError` when the file is unusable
    or nothing is left to evaluate.
    """
    from ..data.coco_records import read_coco

    ann_path = Path(annotation_file).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else ann_path.parent
    if ann_path.is_file() and not root.is_dir():
        raise EvaluationError(f"image root is not a directory: {root}")
    cases = coco_set(read_coco(ann_path, root, verify_images=False), include_absent=include_absent, modality=modality)
    logger.info(
        "%s: %d image(s), %d concept(s): %s",
        ann_path,
        len(cases.cases),
        len(cases.prompts),
        ", ".join(cases.prompts.values()),
    )
    return cases


def coco_set(records: CocoRecords, *, include_absent: bool = False, modality: str | None = None) -> CocoSet:
    """Cases of a split already read (trainer validation passes its dataset's records); see :func:`load_coco_set`."""
    prompts = {c.category_id: c.prompt for c in records.concepts.values()}
    cases = []
    for rec in records.images:
        asked = set(records.mask_prompts(rec)) | set(records.absent_prompts(rec) if include_absent else ())
        cats = [c for c, p in prompts.items() if p in asked]
        if cats:
            cases.append(
                ImageCase(
                    case_id=rec.file_name,
                    image_id=rec.image_id,
                    image_path=rec.path,
                    categories=cats,
                    modality=rec.entry.get("modality") or modality,
                )
            )
    for file_name, path, reason in records.rejected:
        cases.append(ImageCase(file_name, -1, path, [], modality, problem=f"{path}: {reason}"))
    if not any(c.problem is None for c in cases):
        raise EvaluationError(
            f"{records.annotation_file}: no image has an annotation with a usable mask; nothing to evaluate"
        )
    return CocoSet(records, prompts, cases)


def load_label_prompts(path: str | Path) -> dict[int, str]:
    """``{"1": "liver", "2": "spleen"}`` from a JSON or YAML file -> {1: "liver", 2: "spleen"}.

    Also a list of names for values 1, 2, ... (plain, or as ``{"labels": [...]}``, the form of the
    demo's ``examples/labels.json``).
    """
    p = Path(path).expanduser()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except OSError as exc:
        raise EvaluationError(f"cannot read the label-to-prompt mapping {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise EvaluationError(f"{p} is not valid JSON/YAML: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("labels"), list):
        raw = raw["labels"]
    if isinstance(raw, list):
        raw = {i + 1: name for i, name in enumerate(raw)}
    if not isinstance(raw, dict) or not raw:
        raise EvaluationError(
            f'{p}: expected a mapping of label values to prompts, e.g. {{"1": "liver"}}, or a list (values 1, 2, ...)'
        )
    out: dict[int, str] = {}
    for key, value in raw.items():
        try:
            label = int(str(key).strip())
        except ValueError:
            raise EvaluationError(f"{p}: label {key!r} is not an integer") from None
        if label <= 0:
            raise EvaluationError(f"{p}: label {label} must be > 0 (0 is background)")
        if not isinstance(value, str) or not value.strip():
            raise EvaluationError(f"{p}: label {label} needs a non-empty prompt, got {value!r}")
        out[label] = " ".join(value.split())
    return out


def _strip_volume_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (*_NIFTI_SUFFIXES, ".dcm"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _volume_case_id(name: str) -> str:
    """File name without extension and without nnU-Net's channel suffix (``case_0000.nii.gz`` -> ``case``)."""
    stem = _strip_volume_suffix(name)
    return stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem


def read_volume_pairs(csv_path: str | Path, modality: str | None = None) -> list[VolumeCase]:
    """Cases from a CSV with columns ``image,label`` (optional ``case_id``, ``modality``).

    Relative paths are relative to the CSV's folder, so the file can travel with the data.
    """
    p = Path(csv_path).expanduser()
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except OSError as exc:
        raise EvaluationError(f"cannot read the volume list {p}: {exc}") from exc
    if not {"image", "label"} <= set(columns):
        raise EvaluationError(f"{p}: needs the columns 'image' and 'label' (has {columns})")
    cases = []
    for i, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise EvaluationError(f"{p}, line {i}: empty 'image'")
        image = Path(row["image"]).expanduser()
        image = image if image.is_absolute() else p.parent / image
        label = Path(row["label"]).expanduser() if row.get("label") else None
        if label is not None and not label.is_absolute():
            label = p.parent / label
        cases.append(
            VolumeCase(
                case_id=row.get("case_id") or _volume_case_id(image.name),
                image_path=image,
                label_path=label,
                modality=row.get("modality") or modality,
                problem=None if label else f"{p}, line {i}: no label map given",
            )
        )
    if not cases:
        raise EvaluationError(f"{p} lists no volumes")
    return cases


def match_volume_dirs(image_dir: str | Path, label_dir: str | Path, modality: str | None = None) -> list[VolumeCase]:
    """Pair ``image_dir/<name>`` with ``label_dir/<name>.nii[.gz]``.

    ``<name>`` is the image's name without ``.nii[.gz]``/``.dcm``, and without nnU-Net's channel
    suffix ``_0000`` (``case_0000.nii.gz`` pairs with ``case.nii.gz``); sub-folders are DICOM series.
    """
    images, labels = Path(image_dir).expanduser(), Path(label_dir).expanduser()
    for d in (images, labels):
        if not d.is_dir():
            raise EvaluationError(f"not a directory: {d}")
    label_files = {
        _strip_volume_suffix(f.name): f
        for f in sorted(labels.iterdir())
        if f.is_file() and f.name.lower().endswith(_NIFTI_SUFFIXES)
    }
    cases, used = [], set()
    for f in sorted(images.iterdir()):
        if f.name.startswith(".") or not (f.is_dir() or f.name.lower().endswith((*_NIFTI_SUFFIXES, ".dcm"))):
            continue
        stem = _strip_volume_suffix(f.name)
        name = stem if stem in label_files else _volume_case_id(f.name)
        label = label_files.get(name)
        used.add(name)
        cases.append(
            VolumeCase(
                case_id=name,
                image_path=f,
                label_path=label,
                modality=modality,
                problem=None if label else f"no label map {name}.nii.gz in {labels}",
            )
        )
    if not cases:
        raise EvaluationError(f"no volumes (.nii, .nii.gz, .dcm or DICOM folders) in {images}")
    unused = sorted(set(label_files) - used)
    if unused:
        logger.warning("%d label map(s) in %s have no image: %s", len(unused), labels, ", ".join(unused[:10]))
    return cases


def read_label_map(path: str | Path, volume: Volume) -> np.ndarray:
    """Integer label map on the image volume's voxel grid; a mismatch is a :class:`CaseError`."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise CaseError(f"label map not found: {p}")
    try:
        img = nib.load(p)
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises ImageFileError, gzip/zlib/EOF errors, ...
        raise CaseError(f"cannot read label map {p} ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.shape != volume.shape:
        raise CaseError(f"label map {p} has shape {data.shape} but the image {volume.path} has {volume.shape}")
    diff = float(np.max(np.abs(np.asarray(img.affine) - volume.affine)))
    if diff > _AFFINE_ATOL_MM:
        raise CaseError(
            f"label map {p} and image {volume.path} have different affines (up to {diff:.3g} mm apart); "
            "the label map must be on the image's voxel grid"
        )
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise CaseError(f"label map {p} holds non-integer values; expected integer labels")
        data = data.astype(np.int32)
    elif data.dtype.kind not in "iub":
        raise CaseError(f"label map {p} has dtype {data.dtype}; expected integer labels")
    return data
