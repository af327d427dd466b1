"""COCO -> per-image concept queries for SAM3 training.

One sample per image. Each category present in the image becomes one text query (the prompt) whose
targets are *all* its instances; ``num_negatives`` categories absent from the image are added as
queries with empty targets, so the model learns to say "not here" (presence) instead of firing on
any prompt.

The COCO file is read and cleaned by :func:`.coco_records.read_coco`, the one reader that trainer
validation and ``medsam3-evaluate`` use too; its docstring lists the cleaning rules (prompts,
merged categories, crowd, box-only, bad data). What this class adds:

* **Synonyms**: an optional ``synonyms`` list of a category is sampled from (together with the
  prompt) when ``use_synonyms=True`` - meant for the training split; evaluation keeps the canonical
  prompt.
* **Negatives** are drawn only from the split's concepts (those with a usable annotation), never
  from a concept present in the image (any annotation of it, crowd or skipped ones included).
* **Crowd** annotations are not targets; a concept whose only instances in an image are crowds
  gets no query for that image (neither positive nor negative).
* **Box-only** annotations are targets with ``mask_valid`` False: the loss skips their mask terms.
* ``DatasetError`` is raised only when no usable image is left. Images are verified at construction
  (``verify_images``), so a bad file cannot end an epoch.
* **Randomness** (negatives, synonyms, augmentation) comes from ``numpy`` generators seeded with
  ``(seed, epoch, index, stream)``: call ``set_epoch`` every epoch. With ``persistent_workers=True``
  a DataLoader's workers keep their own copy of the dataset and do not see ``set_epoch``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .coco_records import Concept, ConceptQuery, ConceptSample, DatasetError, ImageRecord, read_coco
from .layout import resolve_split
from .transforms import AugmentConfig, augment, load_rgb_image, normalize_image, resize_image

__all__ = ["CocoConceptDataset", "ConceptQuery", "ConceptSample", "DatasetError"]

logger = logging.getLogger(__name__)

_MAX_FALLBACK_TRIES = 10
# Random streams derived from (seed, epoch, index, stream): changing one use never shifts another.
_STREAM_NEGATIVES, _STREAM_SYNONYMS, _STREAM_AUGMENT = 0, 1, 2


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
            raise UserError(f"resolution and mask_resolution must be positive, got {resolution}, {mask_resolution}")
        if num_negatives < 0:
            raise UserError(f"num_negatives must be >= 0, got {num_negatives}")
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.resolution = int(resolution)
        self.mask_resolution = int(mask_resolution)
        self.num_negatives = int(num_negatives)
        self.augment = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_dict(augment)
        self.seed = int(seed)
        self.use_synonyms = use_synonyms
        self.epoch = 0

        self.records = read_coco(self.annotation_file, self.image_root, verify_images=verify_images)
        self.coco = self.records.coco
        # Concepts without any usable annotation (e.g. Roboflow's super-category) are not in the records.
        self.concepts: dict[str, Concept] = self.records.concepts
        self._negative_pool: list[str] = list(self.concepts)  # by category id

        records = list(self.records.images)
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
        if not self._records:
            skipped = self.records.skipped
            raise DatasetError(
                f"no usable images in {self.annotation_file} (image root {self.image_root})"
                + (f"; skipped {skipped}" if skipped else "")
                + ". Check that image_root is the folder the 'file_name' entries are relative to, that the "
                "files exist and open, and that annotations have a named category and a valid polygon, RLE or bbox."
            )

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
        """Ground truth at the annotation frame size, canonical prompts (see :mod:`.coco_records`).

        Returns ``({prompt: (H, W) bool union of its masks}, [prompts absent from the image])``.
        """
        rec = self._records[index]
        return self.records.semantic_masks(rec), self.records.absent_prompts(rec)

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
