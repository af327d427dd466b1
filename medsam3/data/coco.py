"""COCO -> per-image concept queries for SAM3 training.

One sample per image. Each category present in the image becomes one text query (the prompt) whose
targets are *all* its instances; ``num_negatives`` categories absent from the image are added as
queries with empty targets, so the model learns to say "not here" (presence) instead of firing on
any prompt.

Rules worth knowing (all decided here, all logged):

* **Prompt text**: a category's ``prompt`` field (non-empty string) overrides its ``name``. An optional
  ``synonyms`` list is sampled from (together with the prompt) when ``use_synonyms=True`` - meant for
  the training split; evaluation keeps the canonical prompt. Categories whose prompts compare equal
  (case-insensitively) are one concept.
* **Negatives** are drawn only from concepts with at least one usable annotation in this dataset.
  Roboflow exports carry an unused super-category (often id 0): having no annotations, it is never a
  negative. A concept is never a negative for an image that has *any* annotation of it - including
  crowd annotations and annotations skipped as invalid - because it is present there.
* **Crowd** annotations (``iscrowd=1``) are not targets; a concept whose only instances in an image
  are crowds gets no query for that image (neither positive nor negative).
* **Box-only** annotations (no ``segmentation`` or ``[]``, valid ``bbox``) are kept; their
  ``mask_valid`` entry is False and the loss skips their mask terms.
* **Boxes** come from ``bbox`` when it is valid, else from the mask extent.
* **Bad data** (missing/corrupt image, ``file_name`` escaping the image root, degenerate polygon, RLE
  of the wrong size, category without a name, unknown category/image id) is skipped with a warning
  that names it, then one summary line. ``DatasetError`` is raised only when no usable image is left.
  All images are opened and verified at construction, so a bad file cannot end an epoch.
* **Randomness** (negatives, synonyms, augmentation) comes from ``numpy`` generators seeded with
  ``(seed, epoch, index, stream)``: call ``set_epoch`` every epoch. With ``persistent_workers=True``
  a DataLoader's workers keep their own copy of the dataset and do not see ``set_epoch``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .coco_records import (
    Concept,
    ConceptQuery,
    ConceptSample,
    DatasetError,
    ImageRecord,
    SkipLog,
    clean_annotation,
    concept_key,
    escapes_root,
    is_number,
    verify_image,
)
from .layout import resolve_split
from .transforms import AugmentConfig, augment, load_rgb_image, normalize_image, resize_image

__all__ = ["CocoConceptDataset", "ConceptQuery", "ConceptSample", "DatasetError"]

logger = logging.getLogger(__name__)

_MAX_FALLBACK_TRIES = 10
# Random streams derived from (seed, epoch, index, stream): changing one use never shifts another.
_STREAM_NEGATIVES, _STREAM_SYNONYMS, _STREAM_AUGMENT = 0, 1, 2


MAX_SIDE = 65535  # the largest PNG/JPEG side; annotation frames beyond it are corrupt (masks are h x w)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CocoConceptDataset(Dataset):
    """Per-image samples of positive and negative text queries from a COCO file.

    Args:
        annotation_file: COCO JSON (see ``resolve_split`` for the layouts).
        image_root: folder that ``file_name`` entries are relative to; paths leaving it are refused.
        resolution: side of the square model input (1008 for SAM3).
        num_negatives: absent concepts added per image as empty-target queries (fewer if not enough).
        augment: ``AugmentConfig`` or a mapping for ``AugmentConfig.from_dict``; None = off.
        seed: base seed for negatives, synonyms and augmentation (with epoch and index).
        mask_resolution: side of the target masks (288 = SAM3's mask output at 1008 px).
        use_synonyms: sample a category's prompt among ``[prompt] + synonyms`` (training).
        verify_images: open and verify every image at construction (recommended).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        resolution: int = 1008,
        num_negatives: int = 3,
        augment: AugmentConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
        *,
        mask_resolution: int = 288,
        use_synonyms: bool = False,
        verify_images: bool = True,
    ) -> None:
        if resolution < 1 or mask_resolution < 1:
            raise ValueError(f"resolution and mask_resolution must be positive, got {resolution}, {mask_resolution}")
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.resolution = int(resolution)
        self.mask_resolution = int(mask_resolution)
        self.num_negatives = int(num_negatives)
        self.augment = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_dict(augment)
        self.seed = int(seed)
        self.use_synonyms = use_synonyms
        self.epoch = 0

        raw = self._read_json()
        skip = SkipLog(str(self.annotation_file))
        concepts, cat_to_key = self._parse_categories(raw, skip)
        images = self._parse_images(raw, skip, verify_images)
        annotations = self._parse_annotations(raw, skip, images, cat_to_key)

        used_keys = {key for rec in images.values() for key in rec.instances}
        # Concepts without any usable annotation (e.g. Roboflow's super-category) are dropped.
        self.concepts: dict[str, Concept] = {k: c for k, c in concepts.items() if k in used_keys}
        self._negative_pool: list[str] = sorted(self.concepts, key=lambda k: (self.concepts[k].category_id, k))

        records = sorted(images.values(), key=lambda r: r.image_id)
        if self.num_negatives == 0:
            dropped = [r for r in records if not r.instances]
            if dropped:
                logger.info(
                    "%s: %d images without usable annotations are unused (num_negatives=0)",
                    self.annotation_file,
                    len(dropped),
                )
            records = [r for r in records if r.instances]
        elif len(self._negative_pool) == 0:
            records = []
        self._records: list[ImageRecord] = records

        if skip.counts:
            logger.warning("%s: skipped %s; %d images usable", self.annotation_file, skip.summary(), len(self._records))
        if not self._records:
            raise DatasetError(
                f"no usable images in {self.annotation_file} (image root {self.image_root})"
                + (f"; skipped {skip.summary()}" if skip.counts else "")
                + ". Check that image_root is the folder the 'file_name' entries are relative to, that the "
                "files exist and open, and that annotations have a named category and a valid polygon, RLE or bbox."
            )

        # pycocotools index over the cleaned data only: annToMask needs image height/width.
        cleaned = {
            "images": [
                {"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
                for r in images.values()
            ],
            "annotations": annotations,
            "categories": [{"id": c.category_id, "name": c.prompt} for c in self.concepts.values()],
        }
        self.coco = COCO()
        self.coco.dataset = cleaned
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

    @classmethod
    def from_split(
        cls,
        data_dir: str | Path | None,
        split: str = "train",
        *,
        annotation_file: str | Path | None = None,
        image_root: str | Path | None = None,
        **kwargs: Any,
    ) -> CocoConceptDataset:
        """Build from a Roboflow or plain COCO layout (see ``resolve_split``)."""
        paths = resolve_split(data_dir, split, annotation_file=annotation_file, image_root=image_root)
        return cls(paths.annotation_file, paths.image_root, **kwargs)

    # ------------------------------------------------------------------ parsing
    def _read_json(self) -> dict[str, Any]:
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotation_file}")
        try:
            with open(self.annotation_file, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{self.annotation_file} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise DatasetError(f"{self.annotation_file}: expected a COCO object at the top level")
        for key in ("images", "annotations", "categories"):
            if not isinstance(raw.get(key, []), list):
                raise DatasetError(f"{self.annotation_file}: '{key}' must be a list")
        if not raw.get("images"):
            raise DatasetError(f"{self.annotation_file} lists no images")
        return raw

    def _parse_categories(self, raw: dict[str, Any], skip: SkipLog) -> tuple[dict[str, Concept], dict[int, str]]:
        concepts: dict[str, Concept] = {}
        cat_to_key: dict[int, str] = {}
        for cat in raw.get("categories", []):
            cid = cat.get("id") if isinstance(cat, dict) else None
            if not isinstance(cid, int) or isinstance(cid, bool):
                skip("categories", f"category {cat!r}: no integer 'id'")
                continue
            if cid in cat_to_key:
                skip("categories", f"category id={cid}: duplicate id")
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
                logger.warning("%s: category id=%d: 'synonyms' is not a list; ignored", self.annotation_file, cid)
                synonyms_raw = []
            synonyms = [" ".join(s.split()) for s in synonyms_raw if isinstance(s, str) and s.strip()]
            key = concept_key(prompt)
            cat_to_key[cid] = key
            if key in concepts:
                concept = concepts[key]
                concept.category_id = min(concept.category_id, cid)
                concept.synonyms.extend(s for s in synonyms if s not in concept.synonyms)
            else:
                concepts[key] = Concept(key, prompt, cid, synonyms)
        return concepts, cat_to_key

    def _parse_images(self, raw: dict[str, Any], skip: SkipLog, verify: bool) -> dict[int, ImageRecord]:
        images: dict[int, ImageRecord] = {}
        seen: set[int] = set()
        for img in raw.get("images", []):
            iid = img.get("id") if isinstance(img, dict) else None
            if not isinstance(iid, int) or isinstance(iid, bool):
                skip("images", f"image {img!r}: no integer 'id'")
                continue
            if iid in seen:
                skip("images", f"image id={iid}: duplicate id")
                continue
            seen.add(iid)
            file_name = img.get("file_name")
            if not (isinstance(file_name, str) and file_name.strip()):
                skip("images", f"image id={iid}: no 'file_name'")
                continue
            if escapes_root(file_name):
                skip("images", f"image id={iid} file_name={file_name!r}: path leaves the image root {self.image_root}")
                continue
            path = self.image_root / file_name
            try:
                found = path.is_file()
            except (OSError, ValueError) as err:  # a name too long, or with a NUL byte
                skip("images", f"image id={iid} file_name={file_name[:80]!r}: not a usable file name ({err})")
                continue
            if not found:
                skip("images", f"image id={iid} file_name={file_name!r}: file not found at {path}")
                continue
            height, width = img.get("height"), img.get("width")
            if verify or not (is_number(height) and is_number(width)):
                try:
                    actual_h, actual_w = verify_image(path)
                except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                    skip("images", f"image id={iid} file_name={file_name!r}: cannot be read ({err})")
                    continue
                if is_number(height) and is_number(width) and (int(height), int(width)) != (actual_h, actual_w):
                    logger.warning(
                        "%s: image id=%d %r is %dx%d on disk but %dx%d in the annotations; using the "
                        "annotation frame (targets are normalised, so the image is just resized)",
                        self.annotation_file,
                        iid,
                        file_name,
                        actual_w,
                        actual_h,
                        int(width),
                        int(height),
                    )
                if not (is_number(height) and is_number(width) and height > 0 and width > 0):
                    height, width = actual_h, actual_w
            if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):  # masks are decoded at this size
                skip("images", f"image id={iid} file_name={file_name!r}: size {width}x{height} is not plausible")
                continue
            images[iid] = ImageRecord(iid, file_name, path, int(height), int(width), defaultdict(list), set())
        return images

    def _parse_annotations(
        self,
        raw: dict[str, Any],
        skip: SkipLog,
        images: dict[int, ImageRecord],
        cat_to_key: dict[int, str],
    ) -> list[dict[str, Any]]:
        known_image_ids = {
            img.get("id") for img in raw.get("images", []) if isinstance(img, dict) and _is_int(img.get("id"))
        }
        cleaned: list[dict[str, Any]] = []
        next_id = 1 + max(
            (a["id"] for a in raw.get("annotations", []) if isinstance(a, dict) and isinstance(a.get("id"), int)),
            default=0,
        )
        used_ids: set[int] = set()
        for ann in raw.get("annotations", []):
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
            if ann.get("iscrowd", 0):
                continue  # crowd: present, but not a target
            result = clean_annotation(self.annotation_file, ann, rec)
            if isinstance(result, str):
                skip("annotations", f"{label} in {rec.file_name!r}: {result}")
                continue
            if not isinstance(aid, int) or isinstance(aid, bool) or aid in used_ids:
                aid, next_id = next_id, next_id + 1
            used_ids.add(aid)
            result.update(id=aid, image_id=iid, category_id=cid)
            cleaned.append(result)
            rec.instances[key].append(aid)
        return cleaned

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._records)

    def set_epoch(self, epoch: int) -> None:
        """Vary negatives, synonyms and augmentation per epoch, reproducibly."""
        self.epoch = int(epoch)

    @property
    def prompts(self) -> list[str]:
        """Canonical prompt of every concept that has annotations, by category id."""
        return [self.concepts[k].prompt for k in self._negative_pool]

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    def image_path(self, index: int) -> Path:
        """Path of the ``index``-th usable image."""
        return self._records[index].path

    def semantic_targets(self, index: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Ground truth for evaluation at the annotation frame size, canonical prompts.

        Returns ``({prompt: (H, W) bool union of its instances}, [prompts absent from the image])``.
        Box-only instances contribute nothing to the masks; concepts whose instances here are all
        crowd (present but not targets) appear in neither.
        """
        rec = self._records[index]
        masks: dict[str, np.ndarray] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for key in sorted(rec.instances, key=lambda k: (self.concepts[k].category_id, k)):
                union = np.zeros((rec.height, rec.width), dtype=bool)
                usable = False
                for aid in rec.instances[key]:
                    ann = self.coco.anns[aid]
                    if ann["mask_valid"]:
                        union |= self.coco.annToMask(ann).astype(bool)
                        usable = True
                if usable:
                    masks[self.concepts[key].prompt] = union
        absent = [self.concepts[k].prompt for k in self._negative_pool if k not in rec.present]
        return masks, absent

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def _prompt(self, concept: Concept, rng: np.random.Generator) -> str:
        if self.use_synonyms and concept.synonyms:
            options = [concept.prompt, *concept.synonyms]
            return options[int(rng.integers(len(options)))]
        return concept.prompt

    def _instance_targets(
        self, rec: ImageRecord, ann_ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised cxcywh boxes, bool masks at mask_resolution and mask validity of ``ann_ids``."""
        m = self.mask_resolution
        boxes = torch.zeros(len(ann_ids), 4, dtype=torch.float32)
        masks = torch.zeros(len(ann_ids), m, m, dtype=torch.bool)
        valid = torch.zeros(len(ann_ids), dtype=torch.bool)
        with warnings.catch_warnings():
            # pycocotools' decoder trips numpy 2's __array__(copy=...) deprecation on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            for i, aid in enumerate(ann_ids):
                ann = self.coco.anns[aid]
                x, y, bw, bh = ann["bbox"]
                boxes[i] = torch.tensor(
                    [(x + bw / 2) / rec.width, (y + bh / 2) / rec.height, bw / rec.width, bh / rec.height]
                )
                if ann["mask_valid"]:
                    # Full-resolution decode, then area-downsample one instance at a time (bounded memory).
                    full = torch.from_numpy(self.coco.annToMask(ann)).to(torch.float32)[None, None]
                    masks[i] = F.interpolate(full, size=(m, m), mode="area")[0, 0] >= 0.5
                    valid[i] = True
        return boxes.clamp_(0.0, 1.0), masks, valid

    def __getitem__(self, index: int) -> ConceptSample:
        if not -len(self._records) <= index < len(self._records):
            raise IndexError(f"index {index} out of range for {len(self._records)} images")
        index %= len(self._records)
        for attempt in range(_MAX_FALLBACK_TRIES):
            candidate = (index + attempt) % len(self._records)
            rec = self._records[candidate]
            try:
                image = load_rgb_image(rec.path)
            except (OSError, SyntaxError, ValueError) as err:
                # Verified at construction, so this is rare (file changed or truncated mid-stream).
                logger.error("image %r could not be decoded (%s); using the next image instead", rec.file_name, err)
                continue
            return self._build(candidate, rec, image)
        raise DatasetError(f"{_MAX_FALLBACK_TRIES} consecutive images from index {index} could not be decoded")

    def _build(self, index: int, rec: ImageRecord, image: Image.Image) -> ConceptSample:
        pixels = resize_image(image, self.resolution)
        syn_rng = self._rng(index, _STREAM_SYNONYMS)

        positive_keys = sorted(rec.instances, key=lambda k: (self.concepts[k].category_id, k))
        all_ids = [aid for key in positive_keys for aid in rec.instances[key]]
        boxes, masks, valid = self._instance_targets(rec, all_ids)
        owner = torch.tensor([i for i, key in enumerate(positive_keys) for _ in rec.instances[key]], dtype=torch.long)

        if self.augment.enabled:
            image_f, boxes, masks, keep = augment(pixels, boxes, masks, self.augment, self._rng(index, _STREAM_AUGMENT))
            boxes, masks, valid, owner = boxes[keep], masks[keep], valid[keep], owner[keep]
            pixel_values = normalize_image(image_f)
        else:
            pixel_values = normalize_image(pixels)

        queries: list[ConceptQuery] = []
        for i, key in enumerate(positive_keys):
            concept = self.concepts[key]
            sel = owner == i
            queries.append(
                ConceptQuery(
                    prompt=self._prompt(concept, syn_rng),
                    category_id=concept.category_id,
                    boxes=boxes[sel],
                    masks=masks[sel],
                    mask_valid=valid[sel],
                    # An instance zoomed out of view leaves a query without targets: a true negative now.
                    is_negative=not bool(sel.any()),
                )
            )

        pool = [k for k in self._negative_pool if k not in rec.present]
        count = min(self.num_negatives, len(pool))
        if count:
            picks = self._rng(index, _STREAM_NEGATIVES).choice(len(pool), size=count, replace=False)
            m = self.mask_resolution
            for j in sorted(int(p) for p in picks):
                concept = self.concepts[pool[j]]
                queries.append(
                    ConceptQuery(
                        prompt=self._prompt(concept, syn_rng),
                        category_id=concept.category_id,
                        boxes=torch.zeros(0, 4),
                        masks=torch.zeros(0, m, m, dtype=torch.bool),
                        mask_valid=torch.zeros(0, dtype=torch.bool),
                        is_negative=True,
                    )
                )
        return ConceptSample(
            pixel_values=pixel_values,
            image_id=rec.image_id,
            file_name=rec.file_name,
            original_size=(rec.height, rec.width),
            queries=queries,
        )
