"""The one COCO reader: the cleaned records that training, trainer validation and evaluation read.

:func:`read_coco` parses a COCO file once, with one set of cleaning rules, into :class:`CocoRecords`
(concepts, usable images, a pycocotools index over the cleaned annotations). The training dataset
(:mod:`.coco`) builds its queries from them; :mod:`medsam3.evaluation` scores on
:meth:`CocoRecords.semantic_masks`. So a split means the same images, concepts and ground truth
wherever it is read. The rules:

* **Concepts.** A category's ``prompt`` (non-empty string) overrides its ``name``; a category with
  neither, or without an integer id, is skipped. Categories whose prompts are equal after collapsing
  whitespace and case are **one concept**: their instances are merged (one query per concept in
  training, one Dice per concept and image in evaluation, as SAM3 trains one query per category).
  The concept's id is the smallest of its category ids; the index relabels annotations to it.
  A concept without any usable non-crowd annotation in the file (e.g. Roboflow's unused
  super-category) is not a concept of the split.
* **Images.** Skipped with a warning: no integer id or a duplicate id, no ``file_name``, a
  ``file_name`` leaving the image root, a missing file, and (with ``verify_images``) a file that does
  not decode or whose pixel size differs from the entry's ``height``/``width``. Without ``height``/
  ``width`` in the entry the size is read from the file. Skipped files are listed in
  :attr:`CocoRecords.rejected` (evaluation reports them as failed cases).
* **Annotations.** Skipped with a warning: unknown image or category, non-numeric or degenerate
  polygons (fewer than 3 points or zero area; degenerate parts of a multi-polygon are dropped), RLE
  without ``size``/``counts``, of another size than the image, unreadable or empty. Box-only
  annotations (no or empty ``segmentation``, valid ``bbox``) are kept with ``mask_valid`` False: boxes
  for training, no pixels for Dice. The box is ``bbox`` clipped to the image, else the mask's extent.
  Missing, duplicate or non-positive ids are renumbered (COCOeval needs positive unique ids).
* **Presence.** A concept with *any* annotation on an image (even a skipped, box-only or crowd one)
  is present there: never a negative query, never an "absent" case.
* **Crowd** (``iscrowd=1``) annotations are cleaned like the others and kept in the index (COCOeval
  ignores matches to them). They are not training targets (the matcher pairs queries with single
  objects) but are part of the concept's semantic mask (Dice): their pixels are the concept.
* **Semantic ground truth** of a concept on an image: the union of its annotations that carry a mask
  (crowd included), at the annotation frame. A concept present only through box-only annotations has
  no mask there and is not scored on that image (nor asked as absent).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..errors import InputNotFoundError, UserError
from ..io.api import load_image2d
from ..io.formats import detect_format

if TYPE_CHECKING:  # the query types name tensors; reading a split needs no torch (checked before it loads)
    import torch

__all__ = [
    "CocoRecords",
    "ConceptQuery",
    "ConceptSample",
    "DatasetError",
    "ImageRecord",
    "clean_annotation",
    "read_coco",
]

logger = logging.getLogger("medsam3.data.coco")  # one logger name for the dataset's skip warnings

_MAX_WARNINGS_PER_KIND = 20


class DatasetError(UserError):
    """The annotation file is unusable, or nothing usable is left after skipping bad entries."""


class ConceptQuery(TypedDict):
    """One text query of a sample; ``boxes``/``masks`` are empty (N=0) for a negative."""

    prompt: str
    category_id: int
    boxes: torch.Tensor  # (N, 4) float32, normalised cxcywh in [0, 1]
    masks: torch.Tensor  # (N, m, m) bool at mask_resolution
    mask_valid: torch.Tensor  # (N,) bool, False for box-only annotations
    is_negative: bool


class ConceptSample(TypedDict):
    pixel_values: torch.Tensor  # (3, R, R) float32, normalised like Sam3ImageProcessor
    image_id: int
    file_name: str
    original_size: tuple[int, int]  # (height, width) of the annotation frame
    queries: list[ConceptQuery]


@dataclass
class Concept:
    key: str
    prompt: str
    category_id: int  # smallest category id carrying this prompt
    synonyms: list[str] = field(default_factory=list)


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    instances: dict[str, list[int]]  # concept key -> usable non-crowd annotation ids (training targets)
    present: set[str]  # concept keys with any annotation here (never negatives for this image)
    crowds: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # key -> crowd ids
    entry: dict[str, Any] = field(default_factory=dict)  # the image's COCO entry (modality, source, ...)


class SkipLog:
    """Warn per skipped item (capped per kind) and summarise at the end."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _MAX_WARNINGS_PER_KIND:
            logger.warning("%s: skipping %s", self.source, message)
        elif self.counts[kind] == _MAX_WARNINGS_PER_KIND + 1:
            logger.warning("%s: further skipped %s are not listed individually", self.source, kind)

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))


def concept_key(text: str) -> str:
    return " ".join(text.split()).lower()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def polygon_area(coords: Sequence[float]) -> float:
    xs, ys = np.asarray(coords[0::2], dtype=np.float64), np.asarray(coords[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def escapes_root(file_name: str) -> bool:
    """Lexical check (symlinks inside the root are the user's business)."""
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", file_name):
        return True
    parts = Path(os.path.normpath(file_name.replace("\\", "/"))).parts
    return bool(parts) and parts[0] == ".."


def verify_image(path: Path) -> tuple[int, int]:
    """Open, verify and (for JPEG, cheaply at reduced scale) decode; returns (height, width)."""
    with Image.open(path) as img:
        width, height = img.size
        img.verify()
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
    return height, width


_PIL_VERIFIABLE = frozenset({"png", "jpeg", "bmp"})


def image_size(path: Path, verify: bool = True) -> tuple[int, int]:
    """(height, width) of a stored image; with ``verify``, after checking that it decodes.

    PNG/JPEG/BMP: Pillow (a cheap verify); other formats (DICOM, 16-bit TIFF) are read once through
    :mod:`medsam3.io`, as training and inference read them, so what the trainer lists it can read.
    """
    if detect_format(path) in _PIL_VERIFIABLE:
        if verify:
            return verify_image(path)
        with Image.open(path) as img:
            return img.height, img.width
    height, width = load_image2d(path, log_level=logging.DEBUG).rgb.shape[:2]
    return int(height), int(width)


def clean_annotation(source: Path, ann: dict[str, Any], rec: ImageRecord) -> dict[str, Any] | str:
    """Validated copy of ``ann`` (segmentation, bbox xywh, mask_valid) or the reason it is unusable.

    ``source``: the annotation file, named in warnings.
    """
    h, w = rec.height, rec.width
    segm = ann.get("segmentation")
    rle = None
    mask_valid = True
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        mask_valid = False
    elif isinstance(segm, list):
        polygons = []
        for poly in segm:
            if not isinstance(poly, list) or not all(is_number(v) for v in poly):
                return "polygon with non-numeric coordinates"
            # pycocotools rasterises in C with int arithmetic: far-away points overflow it (a crash)
            if not all(-w <= x <= 2 * w for x in poly[0::2]) or not all(-h <= y <= 2 * h for y in poly[1::2]):
                return f"polygon coordinates far outside the {w}x{h} image: {str(poly)[:80]}"
            if len(poly) < 6 or len(poly) % 2:
                continue
            if polygon_area(poly) <= 0.0:
                continue
            polygons.append([float(v) for v in poly])
        if not polygons:
            return f"empty or degenerate polygon(s) (fewer than 3 points or zero area): {str(segm)[:80]}"
        if len(polygons) < len(segm):
            logger.warning(
                "%s: annotation id=%s: dropped %d degenerate polygon part(s) of %d",
                source,
                ann.get("id"),
                len(segm) - len(polygons),
                len(segm),
            )
        segm = polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    elif isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2) or counts is None:
            return "RLE without 'size' and 'counts'"
        if not all(is_number(v) for v in size) or [int(size[0]), int(size[1])] != [h, w]:
            return f"RLE size {size} does not match the image size {[h, w]}"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "RLE counts must be non-negative integers"
            if sum(counts) != h * w:
                return f"RLE counts add up to {sum(counts)} pixels, the image has {h * w}"
        elif not isinstance(counts, (str, bytes)):
            return f"RLE counts must be a list or a string, not {type(counts).__name__}"
        try:
            rle = mask_utils.frPyObjects(segm, h, w) if isinstance(counts, list) else segm
            if not isinstance(counts, list):  # a compressed string: decode once, so a bad one is refused here
                decoded = mask_utils.decode(rle)
                if decoded.shape[:2] != (h, w):
                    return f"RLE decodes to {decoded.shape[:2]}, the image is {(h, w)}"
            area = float(mask_utils.area(rle))
        except (TypeError, ValueError, UnicodeError) as err:
            return f"unreadable RLE ({err})"
        if area <= 0:
            return "empty RLE mask"
        segm = copy.deepcopy(segm)
    else:
        return f"unsupported segmentation type {type(segm).__name__}"

    bbox = ann.get("bbox")
    box = None
    if isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox):
        x0, y0 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
        x1, y1 = min(float(w), float(bbox[0]) + float(bbox[2])), min(float(h), float(bbox[1]) + float(bbox[3]))
        if x1 > x0 and y1 > y0:
            box = [x0, y0, x1 - x0, y1 - y0]
    if box is None and rle is not None:
        derived = [float(v) for v in mask_utils.toBbox(rle)]
        if derived[2] > 0 and derived[3] > 0:
            box = derived
    if box is None:
        return "no valid bbox and no non-empty mask to derive one from"
    area = float(mask_utils.area(rle)) if rle is not None and mask_valid else box[2] * box[3]
    out: dict[str, Any] = {"bbox": box, "iscrowd": 0, "mask_valid": mask_valid, "area": area}
    if mask_valid:
        out["segmentation"] = segm
    return out


# --------------------------------------------------------------------------------------------- #
# The reader
# --------------------------------------------------------------------------------------------- #
@dataclass
class CocoRecords:
    """A cleaned COCO split (rules in the module docstring); built by :func:`read_coco`."""

    annotation_file: Path
    image_root: Path
    concepts: dict[str, Concept]  # key -> concept, ordered by (category id, key)
    images: list[ImageRecord]  # every usable image, by image id (with or without annotations)
    coco: COCO  # index over the cleaned images and annotations (crowds and box-only ones included)
    rejected: list[tuple[str, Path, str]] = field(default_factory=list)  # (file_name, path, reason)
    skipped: str = ""  # summary of what was skipped ("" when nothing was)

    @property
    def prompts(self) -> list[str]:
        """Canonical prompt of every concept, by category id."""
        return [c.prompt for c in self.concepts.values()]

    def _mask_ids(self, rec: ImageRecord, key: str) -> list[int]:
        ids = (*rec.instances.get(key, ()), *rec.crowds.get(key, ()))
        return [a for a in ids if self.coco.anns[a]["mask_valid"]]

    def mask_prompts(self, rec: ImageRecord) -> list[str]:
        """Prompts of the concepts with a mask on ``rec`` (those scored there), without decoding."""
        return [c.prompt for key, c in self.concepts.items() if self._mask_ids(rec, key)]

    def semantic_masks(self, rec: ImageRecord) -> dict[str, np.ndarray]:
        """``{prompt: (H, W) bool union of the concept's masks}`` for the concepts with a mask on ``rec``."""
        masks: dict[str, np.ndarray] = {}
        with warnings.catch_warnings():
            # pycocotools' decoder trips numpy 2's __array__(copy=...) deprecation on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            for key, concept in self.concepts.items():
                ids = self._mask_ids(rec, key)
                if ids:
                    union = np.zeros((rec.height, rec.width), dtype=bool)
                    for aid in ids:
                        union |= self.coco.annToMask(self.coco.anns[aid]).astype(bool)
                    masks[concept.prompt] = union
        return masks

    def absent_prompts(self, rec: ImageRecord) -> list[str]:
        """Prompts of the concepts without any annotation on ``rec`` (the image's possible negatives)."""
        return [c.prompt for key, c in self.concepts.items() if key not in rec.present]

    def mask_index(self) -> COCO:
        """A pycocotools index over the annotations that carry a mask (what COCOeval ``segm`` needs)."""
        data = dict(self.coco.dataset)
        data["annotations"] = [a for a in self.coco.dataset["annotations"] if a["mask_valid"]]
        return _index(data)


def _index(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def read_coco(annotation_file: str | Path, image_root: str | Path, *, verify_images: bool = True) -> CocoRecords:
    """Read and clean a COCO file (rules in the module docstring); every skip is logged, then summarised.

    ``verify_images`` opens and decodes every image now (training: a bad file cannot end an epoch);
    without it only the file's presence is checked and its size is trusted from the entry (evaluation
    reads each image anyway and reports one that fails). Raises :class:`DatasetError` when the file
    is not a COCO object, :class:`~medsam3.errors.InputNotFoundError` when it does not exist.
    """
    annotation_file, image_root = Path(annotation_file), Path(image_root)
    raw = _read_json(annotation_file)
    skip = SkipLog(str(annotation_file))
    concepts, cat_to_key = _parse_categories(annotation_file, raw, skip)
    images, rejected = _parse_images(annotation_file, image_root, raw, skip, verify_images)
    annotations = _parse_annotations(annotation_file, raw, skip, images, cat_to_key)

    used = {key for rec in images.values() for key in rec.instances}
    ordered = sorted((k for k in concepts if k in used), key=lambda k: (concepts[k].category_id, k))
    kept = {k: concepts[k] for k in ordered}
    for ann in annotations:  # one category id per concept in the index
        ann["category_id"] = concepts[cat_to_key[ann["category_id"]]].category_id
    data = {
        "images": [
            {"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width} for r in images.values()
        ],
        "annotations": annotations,
        "categories": [{"id": c.category_id, "name": c.prompt} for c in kept.values()],
    }
    records = CocoRecords(
        annotation_file,
        image_root,
        kept,
        sorted(images.values(), key=lambda r: r.image_id),
        _index(data),
        rejected,
        skip.summary(),
    )
    if skip.counts:
        logger.warning("%s: skipped %s; %d images usable", annotation_file, records.skipped, len(records.images))
    return records


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a COCO object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key, []), list):
            raise DatasetError(f"{path}: '{key}' must be a list")
    if not raw.get("images"):
        raise DatasetError(f"{path} lists no images")
    return raw


def _entry_id(what: str, kind: str, entry: Any, seen: set[int], skip: SkipLog) -> int | None:
    """The entry's integer id, or None (skipped with a warning) when it has none or repeats one."""
    eid = entry.get("id") if isinstance(entry, dict) else None
    if not isinstance(eid, int) or isinstance(eid, bool):
        skip(kind, f"{what} {entry!r}: no integer 'id'")
        return None
    if eid in seen:
        skip(kind, f"{what} id={eid}: duplicate id")
        return None
    return eid


def _parse_categories(source: Path, raw: dict[str, Any], skip: SkipLog) -> tuple[dict[str, Concept], dict[int, str]]:
    concepts: dict[str, Concept] = {}
    cat_to_key: dict[int, str] = {}
    for cat in raw.get("categories", []):
        cid = _entry_id("category", "categories", cat, set(cat_to_key), skip)
        if cid is None:
            continue
        prompt = cat.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()):
            prompt = cat.get("name")
        if not (isinstance(prompt, str) and prompt.strip()):
            skip("categories", f"category id={cid}: no name (its annotations are skipped too)")
            continue
        prompt = " ".join(prompt.split())
        synonyms_raw = cat.get("synonyms") or []
        if not isinstance(synonyms_raw, list):
            logger.warning("%s: category id=%d: 'synonyms' is not a list; ignored", source, cid)
            synonyms_raw = []
        synonyms = [" ".join(s.split()) for s in synonyms_raw if isinstance(s, str) and s.strip()]
        key = concept_key(prompt)
        cat_to_key[cid] = key
        if key in concepts:
            concept = concepts[key]
            logger.info(
                "%s: categories %d and %d share the prompt %r: one concept", source, concept.category_id, cid, prompt
            )
            concept.category_id = min(concept.category_id, cid)
            concept.synonyms.extend(s for s in synonyms if s not in concept.synonyms)
        else:
            concepts[key] = Concept(key, prompt, cid, synonyms)
    return concepts, cat_to_key


MAX_SIDE = 65535  # the largest PNG/JPEG side; annotation frames beyond it are corrupt (masks are h x w)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_size(path: Path, entry: dict[str, Any], verify: bool) -> tuple[int, int] | str:
    """(height, width) of the annotation frame, or why the image is unusable."""
    height, width = entry.get("height"), entry.get("width")
    given = is_number(height) and is_number(width) and height > 0 and width > 0
    if given and not verify:
        return int(height), int(width)
    try:
        actual = image_size(path, verify)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be read ({err})"
    if given and (int(height), int(width)) != actual:
        return (
            f"is {actual[1]}x{actual[0]} pixels on disk but {int(width)}x{int(height)} in the annotations "
            "(masks drawn on another frame would be misaligned; fix the entry's width/height or the file)"
        )
    return actual


def _parse_images(
    source: Path, root: Path, raw: dict[str, Any], skip: SkipLog, verify: bool
) -> tuple[dict[int, ImageRecord], list[tuple[str, Path, str]]]:
    images: dict[int, ImageRecord] = {}
    rejected: list[tuple[str, Path, str]] = []
    seen: set[int] = set()
    for img in raw.get("images", []):
        iid = _entry_id("image", "images", img, seen, skip)
        if iid is None:
            continue
        seen.add(iid)
        file_name = img.get("file_name")
        if not (isinstance(file_name, str) and file_name.strip()):
            skip("images", f"image id={iid}: no 'file_name'")
            continue
        if escapes_root(file_name):
            skip("images", f"image id={iid} file_name={file_name!r}: path leaves the image root {root}")
            continue
        path = root / file_name
        try:
            problem = None if path.is_file() else f"file not found at {path}"
        except (OSError, ValueError) as err:  # a name too long, or with a NUL byte
            problem = f"not a usable file name ({err})"
        size = _image_size(path, img, verify) if problem is None else problem
        if not isinstance(size, str) and not (1 <= size[0] <= MAX_SIDE and 1 <= size[1] <= MAX_SIDE):
            size = f"size {size[1]}x{size[0]} is not plausible (masks are decoded at it)"
        if isinstance(size, str):
            skip("images", f"image id={iid} file_name={file_name!r}: {size}")
            rejected.append((file_name, path, size))
            continue
        images[iid] = ImageRecord(iid, file_name, path, size[0], size[1], defaultdict(list), set(), entry=dict(img))
    return images, rejected


def _parse_annotations(
    source: Path,
    raw: dict[str, Any],
    skip: SkipLog,
    images: dict[int, ImageRecord],
    cat_to_key: dict[int, str],
) -> list[dict[str, Any]]:
    known_image_ids = {
        img.get("id") for img in raw.get("images", []) if isinstance(img, dict) and _is_int(img.get("id"))
    }
    cleaned: list[dict[str, Any]] = []
    anns = raw.get("annotations", [])
    next_id = 1 + max((a["id"] for a in anns if isinstance(a, dict) and isinstance(a.get("id"), int)), default=0)
    used_ids: set[int] = set()
    for ann in anns:
        if not isinstance(ann, dict):
            skip("annotations", f"annotation {ann!r}: not an object")
            continue
        aid = ann.get("id")
        label = f"annotation id={aid} (image id={ann.get('image_id')})"
        iid = ann.get("image_id")
        if not _is_int(iid):
            skip("annotations", f"{label}: no integer 'image_id'")
            continue
        if iid not in images:
            if iid not in known_image_ids:
                skip("annotations", f"{label}: unknown image id")
            continue  # image itself was skipped (already reported)
        rec = images[iid]
        cid = ann.get("category_id")
        if not _is_int(cid) or cid not in cat_to_key:
            skip("annotations", f"{label}: unknown or unnamed category id {cid!r}")
            continue
        key = cat_to_key[cid]
        rec.present.add(key)
        result = clean_annotation(source, ann, rec)
        if isinstance(result, str):
            skip("annotations", f"{label} in {rec.file_name!r}: {result}")
            continue
        if not isinstance(aid, int) or isinstance(aid, bool) or aid < 1 or aid in used_ids:
            aid, next_id = next_id, next_id + 1
        used_ids.add(aid)
        crowd = bool(ann.get("iscrowd", 0))
        result.update(id=aid, image_id=iid, category_id=cid, iscrowd=int(crowd))
        cleaned.append(result)
        (rec.crowds if crowd else rec.instances)[key].append(aid)
    return cleaned
