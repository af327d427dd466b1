"""What is evaluated: options, cases and ground truth read from COCO files and label-map volumes.

The rules these follow are in the package docstring (:mod:`medsam3.evaluation`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import UserError
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

    @property
    def keep_threshold(self) -> float:
        """The one threshold the model runs with: every reported threshold is derived from it."""
        return self.thresholds[0]


@dataclass
class ImageCase:
    """One COCO image and the categories to ask for on it."""

    case_id: str
    image_id: int
    image_path: Path
    categories: list[int]  # category ids, in the set's category order
    modality: str | None = None


@dataclass
class CocoSet:
    """A COCO split ready for evaluation: cleaned pycocotools index, prompts, cases."""

    annotation_file: Path
    image_root: Path
    coco: Any  # pycocotools.coco.COCO over the cleaned annotations
    prompts: dict[int, str]  # category id -> prompt text
    cases: list[ImageCase]

    def ground_truth(self, case: ImageCase, category_id: int) -> np.ndarray:
        """Union of the category's instance masks on the image (pycocotools ``annToMask``)."""
        info = self.coco.imgs[case.image_id]
        gt = np.zeros((int(info["height"]), int(info["width"])), dtype=bool)
        for ann in self.coco.imgToAnns.get(case.image_id, []):
            if ann["category_id"] == category_id:
                mask = self.coco.annToMask(ann).astype(bool)
                if mask.shape != gt.shape:
                    raise CaseError(
                        f"annotation {ann['id']} of {case.case_id}: RLE size {mask.shape[::-1]} (w, h) "
                        f"differs from the image's {gt.shape[::-1]}"
                    )
                gt |= mask
        return gt


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
def _usable_segmentation(seg: Any) -> Any:
    """The segmentation with degenerate polygons removed, or None if no mask can be drawn from it."""
    if isinstance(seg, dict):
        return seg if "counts" in seg and "size" in seg else None
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return polys or None
    return None


def _concept_text(cat: Mapping[str, Any]) -> str | None:
    for key in ("prompt", "name"):
        value = cat.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return None


def load_coco_set(
    annotation_file: str | Path,
    image_root: str | Path | None = None,
    *,
    include_absent: bool = False,
    modality: str | None = None,
) -> CocoSet:
    """Read a COCO file into cases; the annotation index is cleaned so pycocotools never trips on it.

    ``image_root`` defaults to the JSON file's folder (Roboflow layout). Raises
    :class:`EvaluationError` when the file is unusable or nothing is left to evaluate.
    """
    from pycocotools.coco import COCO

    ann_path = Path(annotation_file).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else ann_path.parent
    if not ann_path.is_file():
        raise EvaluationError(f"COCO annotation file not found: {ann_path}")
    if not root.is_dir():
        raise EvaluationError(f"image root is not a directory: {root}")
    try:
        raw = json.loads(ann_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{ann_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) or not raw["images"]:
        raise EvaluationError(f"{ann_path}: expected a COCO object with a non-empty 'images' list")

    prompts: dict[int, str] = {}
    for cat in raw.get("categories") or []:
        cid = cat.get("id") if isinstance(cat, dict) else None
        text = _concept_text(cat) if isinstance(cat, dict) else None
        if isinstance(cid, int) and text and cid not in prompts:
            prompts[cid] = text
        else:
            logger.warning("%s: ignoring category %r (needs an integer id and a name)", ann_path, cat)
    images = {
        img["id"]: img
        for img in raw["images"]
        if isinstance(img, dict) and "id" in img and isinstance(img.get("file_name"), str)
    }
    if len(images) < len(raw["images"]):
        logger.warning(
            "%s: %d image entr(y/ies) without an id or file_name are ignored",
            ann_path,
            len(raw["images"]) - len(images),
        )

    annotations, present = [], defaultdict(set)  # present: image id -> categories with any annotation
    dropped = 0
    for ann in raw.get("annotations") or []:
        if not isinstance(ann, dict) or ann.get("image_id") not in images or ann.get("category_id") not in prompts:
            dropped += 1
            continue
        present[ann["image_id"]].add(ann["category_id"])
        seg = _usable_segmentation(ann.get("segmentation"))
        if seg is None:
            dropped += 1
            continue
        area = ann.get("area")
        annotations.append(
            {
                **ann,
                "segmentation": seg,
                "id": len(annotations) + 1,  # unique ids for COCOeval
                "iscrowd": 1 if ann.get("iscrowd") in (1, True) else 0,
                "area": float(area) if isinstance(area, (int, float)) else 0.0,
            }
        )
    if dropped:
        logger.warning(
            "%s: %d annotation(s) without a usable mask (box-only, degenerate polygon, unknown "
            "image/category) are not ground truth",
            ann_path,
            dropped,
        )

    coco = COCO()
    coco.dataset = {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": c, "name": p} for c, p in prompts.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    with_masks = {a["category_id"] for a in annotations}
    concepts = [c for c in prompts if c in with_masks]  # e.g. Roboflow's unused super-category is not one
    seen: dict[str, int] = {}
    for c in concepts:
        if prompts[c].lower() in seen:
            logger.warning(
                "%s: categories %d and %d share the prompt %r; they are evaluated separately",
                ann_path,
                seen[prompts[c].lower()],
                c,
                prompts[c],
            )
        seen.setdefault(prompts[c].lower(), c)

    cases = []
    for image_id, info in images.items():
        masked = {a["category_id"] for a in coco.imgToAnns.get(image_id, [])}
        cats = [c for c in concepts if c in masked or (include_absent and c not in present[image_id])]
        if cats:
            cases.append(
                ImageCase(
                    case_id=info["file_name"],
                    image_id=image_id,
                    image_path=root / info["file_name"],
                    categories=cats,
                    modality=info.get("modality") or modality,
                )
            )
    if not cases:
        raise EvaluationError(f"{ann_path}: no image has an annotation with a usable mask; nothing to evaluate")
    logger.info(
        "%s: %d image(s), %d concept(s): %s",
        ann_path,
        len(cases),
        len(concepts),
        ", ".join(prompts[c] for c in concepts),
    )
    return CocoSet(ann_path, root, coco, {c: prompts[c] for c in concepts}, cases)


def load_label_prompts(path: str | Path) -> dict[int, str]:
    """``{"1": "liver", "2": "spleen"}`` from a JSON or YAML file -> {1: "liver", 2: "spleen"}."""
    p = Path(path).expanduser()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except OSError as exc:
        raise EvaluationError(f"cannot read the label-to-prompt mapping {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise EvaluationError(f"{p} is not valid JSON/YAML: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise EvaluationError(f'{p}: expected a mapping of label values to prompts, e.g. {{"1": "liver"}}')
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
