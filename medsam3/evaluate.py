"""Evaluate text-prompted segmentation on labelled 2D (COCO) and 3D (NIfTI) sets, the way papers report it.

Why this module exists: MedSAM3's table is "Dice per concept per modality, text vs text+box". That
number depends on choices (what counts as ground truth, which box, which threshold, what happens
with empty masks) that must be the same for every row, written down, and recomputable from files.

Rules (all fixed here, all in the README):

* **Cases.** 2D: one (image, category) pair per category *present* in the image (it has at least one
  annotation with a usable mask); ``include_absent`` also asks for every other category of the set
  (those with annotations somewhere), whose ground truth is empty. 3D: one (volume, label value)
  pair per entry of the label-to-prompt mapping present in the label map, absent ones likewise only
  with ``include_absent``.
* **Ground truth.** 2D: union of the category's instance masks on the image (``annToMask``, crowd
  regions included); annotations without a usable segmentation (box-only, degenerate polygons) are
  dropped with a warning, and a category present on an image only through them is not evaluated
  there. 3D: ``label_map == value``; the label map must share the image volume's shape and affine.
* **Prompts.** A category's ``prompt`` field overrides its ``name``; in 3D the mapping's text.
* **Protocols.** ``text``: the prompt alone. ``text+box``: the prompt plus the box of the *largest
  connected component* of the ground truth (``scipy.ndimage.label``, face connectivity, ties -> first
  in scan order), xyxy in pixels with exclusive right/bottom edges (a one-pixel component at
  (r, c) gives ``[c, r, c+1, r+1]``). 2D: per image; 3D: per slice, and slices whose ground truth is
  empty (and absent cases) get text only.
* **Prediction.** All detections of the prompt above the threshold (after NMS), unioned into one
  semantic mask. A threshold sweep runs the model *once* per case, keeping detections above the
  lowest threshold, and derives every threshold's mask from them: greedy NMS keeps the same
  detections above ``t`` whether it ran before or after the cut, so this equals separate runs.
* **Metrics.** :func:`medsam3.metrics.compute_all` (Dice, IoU, NSD at ``nsd_tolerance`` mm, HD95):
  3D on the whole volume with the file's voxel spacing; 2D with the image's pixel spacing when the
  file carries one (DICOM), else 1 mm per pixel. Absent cases score 1 when nothing is predicted and
  0 otherwise (HD95 inf, left out of the mean and counted as ``n_inf``).
* **Failures.** A case that cannot be read or whose label map does not match is logged, listed in
  ``failures`` and skipped; the others still count.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from .export import encode_rle, prompt_slug, write_json
from .io import ImageReadError, Volume, load_image2d, load_volume, save_label_map
from .io.windows import WindowSpec, parse_window
from .metrics import compute_all, summarize
from .postprocess import Detections, detection_scores, postprocess_query_outputs
from .postprocess3d import keep_largest_component
from .volume_inference import default_slice_batch

__all__ = [
    "CSV_COLUMNS",
    "CaseError",
    "CocoSet",
    "EvalOptions",
    "EvaluationError",
    "EvaluationReport",
    "Evaluator",
    "ImageCase",
    "METRICS",
    "PROTOCOLS",
    "VolumeCase",
    "VolumeSet",
    "best_thresholds",
    "coco_instance_metrics",
    "format_table",
    "largest_component_box",
    "load_coco_set",
    "load_label_prompts",
    "match_volume_dirs",
    "read_label_map",
    "read_volume_pairs",
    "semantic_masks",
    "summarize_rows",
    "write_report",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("text", "text+box")
METRICS = ("dice", "iou", "nsd", "hd95")
CSV_COLUMNS = (
    "case_id", "modality", "concept", "protocol", "threshold", "present",
    "dice", "iou", "nsd", "hd95",
    "gt_size_px", "pred_size_px", "gt_size_mm", "pred_size_mm", "spacing_mm",
    "prediction", "image", "label", "category_id",
)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_AFFINE_ATOL_MM = 1e-3


class EvaluationError(ValueError):
    """The data set description or the options are unusable: nothing can be evaluated (CLI exit 2)."""


class CaseError(ValueError):
    """One case cannot be evaluated (shape/affine mismatch, bad entry): reported, the rest go on."""


# --------------------------------------------------------------------------------------------- #
# Options and cases
# --------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class EvalOptions:
    """How cases are prompted and scored; validated once so a bad value stops before any work."""

    protocols: tuple[str, ...] = ("text",)
    thresholds: tuple[float, ...] = (0.5,)
    nms_iou: float | None = 0.5
    nsd_tolerance: float = 2.0
    include_absent: bool = False
    slice_batch: int | None = None  # None: 8 on CUDA, 1 on CPU
    axis: int = -1
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
        if not -3 <= self.axis < 3:
            raise EvaluationError(f"slice axis must be in -3..2, got {self.axis}")
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
                    raise CaseError(f"annotation {ann['id']} of {case.case_id}: RLE size {mask.shape[::-1]} (w, h) "
                                    f"differs from the image's {gt.shape[::-1]}")
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


def load_coco_set(annotation_file: str | Path, image_root: str | Path | None = None, *,
                  include_absent: bool = False, modality: str | None = None) -> CocoSet:
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
    images = {img["id"]: img for img in raw["images"] if isinstance(img, dict) and "id" in img
              and isinstance(img.get("file_name"), str)}
    if len(images) < len(raw["images"]):
        logger.warning("%s: %d image entr(y/ies) without an id or file_name are ignored", ann_path,
                       len(raw["images"]) - len(images))

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
        annotations.append({**ann, "segmentation": seg, "id": len(annotations) + 1,  # unique ids for COCOeval
                            "iscrowd": 1 if ann.get("iscrowd") in (1, True) else 0,
                            "area": float(area) if isinstance(area, (int, float)) else 0.0})
    if dropped:
        logger.warning("%s: %d annotation(s) without a usable mask (box-only, degenerate polygon, unknown "
                       "image/category) are not ground truth", ann_path, dropped)

    coco = COCO()
    coco.dataset = {"images": list(images.values()), "annotations": annotations,
                    "categories": [{"id": c, "name": p} for c, p in prompts.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    with_masks = {a["category_id"] for a in annotations}
    concepts = [c for c in prompts if c in with_masks]  # e.g. Roboflow's unused super-category is not one
    seen: dict[str, int] = {}
    for c in concepts:
        if prompts[c].lower() in seen:
            logger.warning("%s: categories %d and %d share the prompt %r; they are evaluated separately",
                           ann_path, seen[prompts[c].lower()], c, prompts[c])
        seen.setdefault(prompts[c].lower(), c)

    cases = []
    for image_id, info in images.items():
        masked = {a["category_id"] for a in coco.imgToAnns.get(image_id, [])}
        cats = [c for c in concepts if c in masked
                or (include_absent and c not in present[image_id])]
        if cats:
            cases.append(ImageCase(case_id=info["file_name"], image_id=image_id, image_path=root / info["file_name"],
                                   categories=cats, modality=info.get("modality") or modality))
    if not cases:
        raise EvaluationError(f"{ann_path}: no image has an annotation with a usable mask; nothing to evaluate")
    logger.info("%s: %d image(s), %d concept(s): %s", ann_path, len(cases), len(concepts),
                ", ".join(prompts[c] for c in concepts))
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
        cases.append(VolumeCase(case_id=row.get("case_id") or _volume_case_id(image.name), image_path=image,
                                label_path=label, modality=row.get("modality") or modality,
                                problem=None if label else f"{p}, line {i}: no label map given"))
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
    label_files = {_strip_volume_suffix(f.name): f for f in sorted(labels.iterdir())
                   if f.is_file() and f.name.lower().endswith(_NIFTI_SUFFIXES)}
    cases, used = [], set()
    for f in sorted(images.iterdir()):
        if f.name.startswith(".") or not (f.is_dir() or f.name.lower().endswith((*_NIFTI_SUFFIXES, ".dcm"))):
            continue
        stem = _strip_volume_suffix(f.name)
        name = stem if stem in label_files else _volume_case_id(f.name)
        label = label_files.get(name)
        used.add(name)
        cases.append(VolumeCase(case_id=name, image_path=f, label_path=label, modality=modality,
                                problem=None if label else f"no label map {name}.nii.gz in {labels}"))
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
        raise CaseError(f"label map {p} and image {volume.path} have different affines (up to {diff:.3g} mm apart); "
                        "the label map must be on the image's voxel grid")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise CaseError(f"label map {p} holds non-integer values; expected integer labels")
        data = data.astype(np.int32)
    elif data.dtype.kind not in "iub":
        raise CaseError(f"label map {p} has dtype {data.dtype}; expected integer labels")
    return data


# --------------------------------------------------------------------------------------------- #
# Prompting and masks
# --------------------------------------------------------------------------------------------- #
def largest_component_box(mask: np.ndarray) -> np.ndarray | None:
    """xyxy pixel box (exclusive right/bottom) of the largest connected component, None if empty.

    Why the largest component: one box per prompt is what the text+box protocol hands the model, and
    the largest component is the deterministic, unambiguous choice for multi-part structures.
    """
    component = keep_largest_component(mask, connectivity=1)  # face connectivity, ties -> first
    if not component.any():
        return None
    rows, cols = ndimage.find_objects(component.astype(np.uint8))[0]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float32)


def _box_row(box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if box is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return np.asarray(box, np.float32).reshape(1, 4), np.ones(1, np.int64)


def _predict_rows(predictor, images: Sequence[np.ndarray],
                  rows: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]], threshold: float,
                  nms_iou: float | None) -> list[Detections]:
    """Detections for (image index, prompt, boxes) rows with one vision pass over ``images``.

    Why not ``Predictor.predict_images``: it takes no boxes, and ``text``/``text+box`` rows should
    share the vision pass (90% of the cost). Same public pieces as ``Predictor.predict``.
    """
    vision, sizes = predictor.encode_images(images)
    out: list[Detections] = []
    step = predictor.prompt_batch_size
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        raw = predictor.forward_rows(vision, [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk],
                                     sizes)
        scores = detection_scores(raw.pred_logits, raw.presence_logits)
        for j, (image_i, prompt, _) in enumerate(chunk):
            out.append(postprocess_query_outputs(prompt, scores[j], raw.pred_boxes[j], raw.pred_masks[j],
                                                 sizes[image_i], threshold, nms_iou))
    return out


def semantic_masks(det: Detections, thresholds: Sequence[float]) -> dict[float, np.ndarray]:
    """Per threshold, the union of the detections scoring above it (the mask Dice is computed on)."""
    return {t: det.masks[det.scores > t].any(axis=0) for t in thresholds}


# --------------------------------------------------------------------------------------------- #
# The evaluation loop
# --------------------------------------------------------------------------------------------- #
@dataclass
class EvaluationReport:
    """Everything a run produced; :func:`write_report` turns it into files."""

    options: EvalOptions
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    n_cases: int = 0
    coco_map: dict[str, Any] | None = None


def _slug_unique(name: str, used: set[str]) -> str:
    slug, k = prompt_slug(name), 1
    candidate = slug
    while candidate in used:
        k += 1
        candidate = f"{slug}_{k}"
    used.add(candidate)
    return candidate


def _thr_dir(t: float) -> str:
    return f"t{t:g}"


class Evaluator:
    """Runs cases through a :class:`~medsam3.predictor.Predictor`, scores them and saves predictions.

    >>> report = Evaluator(predictor, EvalOptions(protocols=("text", "text+box")), "eval/").run(coco=coco_set)
    >>> write_report(report, "eval/")
    """

    def __init__(self, predictor, options: EvalOptions, output_dir: str | Path) -> None:
        self.predictor = predictor
        self.options = options
        self.output_dir = Path(output_dir)
        self.predictions_dir = self.output_dir / "predictions"
        self._case_slugs: set[str] = set()
        self._warned_spacing = False

    # -- shared bookkeeping ------------------------------------------------------------------
    def _row(self, case_id: str, modality: str, concept: str, protocol: str, t: float, pred: np.ndarray,
             gt: np.ndarray, spacing: Sequence[float], prediction: Path, **extra: Any) -> dict[str, Any]:
        metrics = compute_all(pred, gt, spacing=spacing, tolerance_mm=self.options.nsd_tolerance)
        unit = float(np.prod(spacing))
        gt_n, pred_n = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
        return {
            "case_id": case_id, "modality": modality, "concept": concept, "protocol": protocol, "threshold": t,
            "present": bool(gt_n), **metrics,
            "gt_size_px": gt_n, "pred_size_px": pred_n, "gt_size_mm": gt_n * unit, "pred_size_mm": pred_n * unit,
            "spacing_mm": " ".join(f"{s:g}" for s in spacing),
            "prediction": prediction.relative_to(self.output_dir).as_posix(), **extra,
        }

    def _prediction_path(self, protocol: str, t: float, case_slug: str, concept_slug: str, suffix: str) -> Path:
        path = self.predictions_dir / protocol / _thr_dir(t) / case_slug / f"{concept_slug}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- 2D ------------------------------------------------------------------------------------
    def evaluate_image(self, case: ImageCase, dataset: CocoSet) -> tuple[list[dict], dict[str, list[dict]]]:
        """Rows for one COCO image (every protocol x category x threshold) and its COCO detections."""
        opts = self.options
        image = load_image2d(case.image_path, opts.window)
        height, width = image.rgb.shape[:2]
        info = dataset.coco.imgs[case.image_id]
        if "height" not in info or "width" not in info:  # annToMask needs them; trust the file
            info["height"], info["width"] = height, width
        if (int(info["height"]), int(info["width"])) != (height, width):
            raise CaseError(f"{case.image_path} is {width}x{height} pixels but the annotation says "
                            f"{info['width']}x{info['height']}")
        if image.spacing is None and not self._warned_spacing:
            logger.info("2D images without pixel spacing (PNG/JPEG/TIFF) are scored at 1 mm per pixel")
            self._warned_spacing = True
        spacing = tuple(image.spacing) if image.spacing else (1.0, 1.0)
        modality = case.modality or image.meta.get("modality") or "2D"
        gts = {c: dataset.ground_truth(case, c) for c in case.categories}

        plan = [(protocol, c) for protocol in opts.protocols for c in case.categories]
        rows_in = [(0, dataset.prompts[c], _box_row(largest_component_box(gts[c]) if protocol == "text+box" else None))
                   for protocol, c in plan]
        dets = _predict_rows(self.predictor, [image.rgb], rows_in, opts.keep_threshold, opts.nms_iou)

        case_slug = _slug_unique(case.case_id, self._case_slugs)
        concept_slugs: dict[int, str] = {}
        used: set[str] = set()
        for c in case.categories:
            concept_slugs[c] = _slug_unique(dataset.prompts[c], used)
        rows, coco_results = [], defaultdict(list)
        for (protocol, c), det in zip(plan, dets):
            for t, pred in semantic_masks(det, opts.thresholds).items():
                path = self._prediction_path(protocol, t, case_slug, concept_slugs[c], ".png")
                Image.fromarray(pred.astype(np.uint8) * 255).save(path)
                rows.append(self._row(case.case_id, modality, dataset.prompts[c], protocol, t, pred, gts[c], spacing,
                                      path, image=str(case.image_path), label="", category_id=c))
            if opts.coco_map:
                coco_results[protocol] += [
                    {"image_id": case.image_id, "category_id": c, "segmentation": encode_rle(m), "score": float(s)}
                    for m, s in zip(det.masks, det.scores)]
        return rows, coco_results

    # -- 3D ------------------------------------------------------------------------------------
    def evaluate_volume(self, case: VolumeCase, label_prompts: Mapping[int, str]) -> list[dict]:
        """Rows for one volume: slice-wise batched inference, 3D metrics with the volume's spacing."""
        opts = self.options
        if case.problem:
            raise CaseError(case.problem)
        volume = load_volume(case.image_path, opts.window)
        labels = read_label_map(case.label_path, volume)
        present = {v: bool(np.any(labels == v)) for v in label_prompts}
        concepts = [v for v in label_prompts if present[v] or opts.include_absent]
        if not concepts:
            logger.warning("%s: none of the labels %s occurs in %s; nothing to evaluate", case.case_id,
                           sorted(label_prompts), case.label_path)
            return []
        geo = volume.slice_geometry(opts.axis)
        n_slices = volume.num_slices(opts.axis)
        preds = {(protocol, v, t): np.zeros(volume.shape, dtype=bool)
                 for protocol in opts.protocols for v in concepts for t in opts.thresholds}
        index: list[Any] = [slice(None)] * 3
        per_pass = opts.slice_batch or default_slice_batch(self.predictor.device)
        starts = range(0, n_slices, per_pass)
        for start in tqdm(starts, desc=f"{case.case_id} slices", unit="batch", leave=False, disable=None):
            ks = list(range(start, min(n_slices, start + per_pass)))
            images = [volume.slice_rgb(k, opts.axis) for k in ks]
            label_slices = [geo.to_display(np.take(labels, k, axis=geo.axis)) for k in ks]
            plan, rows_in = [], []
            for i in range(len(ks)):
                for protocol in opts.protocols:
                    for v in concepts:
                        box = largest_component_box(label_slices[i] == v) if protocol == "text+box" else None
                        plan.append((i, protocol, v))
                        rows_in.append((i, label_prompts[v], _box_row(box)))
            dets = _predict_rows(self.predictor, images, rows_in, opts.keep_threshold, opts.nms_iou)
            for (i, protocol, v), det in zip(plan, dets):
                index[geo.axis] = ks[i]
                for t, mask in semantic_masks(det, opts.thresholds).items():
                    preds[(protocol, v, t)][tuple(index)] = geo.from_display(mask)

        case_slug = _slug_unique(case.case_id, self._case_slugs)
        used: set[str] = set()
        concept_slugs = {v: _slug_unique(label_prompts[v], used) for v in concepts}
        modality = case.modality or volume.modality or "3D"
        rows = []
        for (protocol, v, t), pred in preds.items():
            path = self._prediction_path(protocol, t, case_slug, concept_slugs[v], ".nii.gz")
            save_label_map(pred.astype(np.uint8), volume, path, dtype=np.uint8)
            rows.append(self._row(case.case_id, modality, label_prompts[v], protocol, t, pred, labels == v,
                                  volume.spacing, path, image=str(case.image_path), label=v, category_id=""))
        return rows

    # -- driver --------------------------------------------------------------------------------
    def run(self, coco: CocoSet | None = None, volumes: VolumeSet | None = None) -> EvaluationReport:
        """Evaluate every case; a failing case is logged and listed, never fatal."""
        report = EvaluationReport(options=self.options)
        jobs: list[tuple[str, Any]] = [("2d", c) for c in (coco.cases if coco else [])]
        jobs += [("3d", c) for c in (volumes.cases if volumes else [])]
        if not jobs:
            raise EvaluationError("no cases to evaluate: give a COCO set and/or volumes")
        report.n_cases = len(jobs)
        evaluated_images: list[int] = []
        coco_results: dict[str, list[dict]] = {p: [] for p in self.options.protocols}
        for kind, case in tqdm(jobs, desc="evaluating", unit="case", disable=None):
            try:
                if kind == "2d":
                    rows, results = self.evaluate_image(case, coco)
                    evaluated_images.append(case.image_id)
                    for protocol, dets in results.items():
                        coco_results[protocol] += dets
                else:
                    rows = self.evaluate_volume(case, volumes.label_prompts)
            except (CaseError, ImageReadError, OSError, ValueError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                logger.error("case %s failed: %s", case.case_id, reason)
                logger.debug("case %s traceback", case.case_id, exc_info=True)
                report.failures.append({"case": str(case.case_id), "path": str(case.image_path), "reason": reason})
                continue
            report.rows += rows
        if self.options.coco_map and coco is not None:
            report.coco_map = {p: coco_instance_metrics(coco, coco_results[p], evaluated_images)
                               for p in self.options.protocols}
        return report


# --------------------------------------------------------------------------------------------- #
# Instance metrics (COCO AP)
# --------------------------------------------------------------------------------------------- #
def coco_instance_metrics(dataset: CocoSet, results: list[dict], image_ids: Sequence[int]) -> dict[str, Any]:
    """COCO ``segm`` AP and AP50, overall and per concept, over the evaluated images and concepts.

    Detections are those above the lowest threshold (after NMS). Without ``include_absent`` the model
    was only asked about categories present in each image, so AP sees no false positives on images
    without the concept.
    """
    from pycocotools.cocoeval import COCOeval

    cat_ids = sorted(dataset.prompts)
    out: dict[str, Any] = {"n_detections": len(results), "n_images": len(image_ids)}
    if not image_ids:
        return {**out, "AP": None, "AP50": None, "per_concept": {}}
    if not results:
        return {**out, "AP": 0.0, "AP50": 0.0, "per_concept": {dataset.prompts[c]: {"AP": 0.0, "AP50": 0.0}
                                                               for c in cat_ids}}
    with contextlib.redirect_stdout(io.StringIO()) as log:
        dt = dataset.coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(dataset.coco, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("COCOeval:\n%s", log.getvalue())

    def _ap(precision: np.ndarray) -> float | None:
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else None

    prec = ev.eval["precision"]  # [iou thresholds, recall, category, area range, max dets]
    per = {dataset.prompts[c]: {"AP": _ap(prec[:, :, k, 0, -1]), "AP50": _ap(prec[0, :, k, 0, -1])}
           for k, c in enumerate(cat_ids)}
    stat = lambda v: None if v < 0 else float(v)  # noqa: E731 - COCOeval says -1 for "no ground truth"
    return {**out, "AP": stat(ev.stats[0]), "AP50": stat(ev.stats[1]), "per_concept": per}


# --------------------------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------------------------- #
def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """mean/std/n of every metric per (modality, concept, protocol, threshold), in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["modality"], r["concept"], r["protocol"], float(r["threshold"])), []).append(r)
    out = []
    for (modality, concept, protocol, t), rs in groups.items():
        entry: dict[str, Any] = {"modality": modality, "concept": concept, "protocol": protocol, "threshold": t,
                                 "n_cases": len(rs), "n_present": sum(bool(r["present"]) for r in rs)}
        for m in METRICS:
            entry[m] = summarize(float(r[m]) for r in rs)
        out.append(entry)
    return out


def best_thresholds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (concept, protocol), over all modalities: the threshold with the highest mean Dice (ties: lowest)."""
    by: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["concept"], r["protocol"])][float(r["threshold"])].append(float(r["dice"]))
    out = []
    for (concept, protocol), per_t in by.items():
        means = {t: summarize(v)["mean"] for t, v in sorted(per_t.items())}
        finite = {t: m for t, m in means.items() if not math.isnan(m)}
        best = max(finite, key=lambda t: (finite[t], -t)) if finite else None
        out.append({"concept": concept, "protocol": protocol, "threshold": best,
                    "dice_mean": finite.get(best, math.nan) if best is not None else math.nan,
                    "dice_by_threshold": {f"{t:g}": m for t, m in means.items()}})
    return out


def _fmt(stats: Mapping[str, Any]) -> str:
    if stats["n"] == 0:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def format_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("dice", "nsd")) -> str:
    """The paper's layout: one line per (modality, concept, threshold), metric columns per protocol."""
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    keyed = {(s["modality"], s["concept"], s["threshold"], s["protocol"]): s for s in summary}
    lines_keys = list(dict.fromkeys((s["modality"], s["concept"], s["threshold"]) for s in summary))
    names = {"dice": "Dice", "iou": "IoU", "nsd": "NSD", "hd95": "HD95"}
    header = ["modality", "concept", "thr", "n"] + [f"{p} {names.get(m, m)}" for p in protocols for m in metrics]
    body = []
    for modality, concept, t in lines_keys:
        first = next(keyed[(modality, concept, t, p)] for p in protocols if (modality, concept, t, p) in keyed)
        cells = [str(modality), str(concept), f"{t:g}", str(first["n_cases"])]
        for p in protocols:
            s = keyed.get((modality, concept, t, p))
            cells += [_fmt(s[m]) if s else "-" for m in metrics]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: the CSV must reproduce the numbers, not round them
    if isinstance(v, bool):
        return int(v)
    return v


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null/"inf" so summary.json is strict JSON any tool can read."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def plot_dice(summary: Sequence[Mapping[str, Any]], best: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Bar chart of mean Dice per concept (bars per protocol, at each concept's best threshold).

    Raises ``ImportError`` when matplotlib is missing (it is optional).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_t = {(b["concept"], b["protocol"]): b["threshold"] for b in best}
    keys = list(dict.fromkeys((s["modality"], s["concept"]) for s in summary))
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(keys) * len(protocols) + 2), 4))
    width = 0.8 / len(protocols)
    for j, p in enumerate(protocols):
        means, stds = [], []
        for modality, concept in keys:
            s = next((s for s in summary if (s["modality"], s["concept"], s["protocol"]) == (modality, concept, p)
                      and s["threshold"] == best_t.get((concept, p))), None)
            means.append(s["dice"]["mean"] if s else 0.0)
            stds.append(s["dice"]["std"] if s else 0.0)
        ax.bar(np.arange(len(keys)) + j * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), label=p,
               capsize=3)
    ax.set_xticks(np.arange(len(keys)) + width * (len(protocols) - 1) / 2)
    ax.set_xticklabels([f"{c}\n({m})" for m, c in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (mean ± std)")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(report: EvaluationReport, output_dir: str | Path, *, meta: Mapping[str, Any] | None = None,
                 figure: bool = False) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and (optionally) ``dice_per_concept.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    csv_path = out / "per_case.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in report.rows:
            writer.writerow({k: _csv_value(r.get(k, "")) for k in CSV_COLUMNS})
    os.replace(tmp, csv_path)
    paths["per_case"] = csv_path

    summary = summarize_rows(report.rows)
    best = best_thresholds(report.rows)
    opts = asdict(report.options)
    opts["window"] = None if report.options.window is None else str(report.options.window)
    data = {
        **(dict(meta) if meta else {}),
        "options": opts,
        "n_cases": report.n_cases,
        "n_evaluated": report.n_cases - len(report.failures),
        "n_rows": len(report.rows),
        "results": summary,
        "best_thresholds": best,
        "coco_map": report.coco_map,
        "failures": report.failures,
        "notes": {
            "hd95": "cases where exactly one of prediction/ground truth is empty have HD95 = inf; "
                    "they are left out of the HD95 mean and counted in n_inf",
            "spacing_2d": "2D images without pixel spacing are scored at 1 mm per pixel",
        },
    }
    paths["summary"] = write_json(_json_safe(data), out / "summary.json")
    if figure:
        try:
            paths["figure"] = plot_dice(summary, best, out / "dice_per_concept.png")
        except ImportError:
            logger.warning("--figure needs matplotlib, which is not installed (pip install matplotlib); "
                           "no figure written")
    return paths
