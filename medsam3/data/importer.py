"""nnU-Net v2 / MSD dataset folder -> the COCO layout the trainer reads, with a manifest.

``OUT_DIR/{train,valid,test}/_annotations.coco.json`` with the images beside it, and
``OUT_DIR/manifest.json`` (source metadata and licence, options, the split, counts per concept).

* **Images.** A 3D case becomes one 8-bit PNG per kept slice along its last voxel axis (the axis
  ``infer_sam.py`` slices by default), in display orientation and with the volume's intensity
  mapping: :meth:`medsam3.io.Volume.slice_rgb`, the very function inference calls. A 2D case is
  copied unchanged (16-bit PNG stays 16-bit, RGB stays RGB): training reads it through
  :func:`medsam3.io.read_rgb` as inference does.
* **Which slices.** Every slice holding a concept, plus each slice holding none with probability
  ``negative_share`` (seeded per case): negatives teach the model to say "not here".
* **Instances.** Each concept's mask on a slice is cut into connected components (8-connectivity:
  pixels touching at a corner are one instance); ``semantic=True`` keeps one mask per concept.
  Masks are stored as compressed RLE. A region concept is the union of its values.
* **Traceability.** Every image record carries ``source_case``, ``source_file``, ``source_subset``,
  ``slice_index``, ``slice_axis``, ``slice_spacing`` (mm, None for 2D) and ``intensity``.
* **Atomic.** Everything is written into a hidden folder beside ``OUT_DIR`` and renamed at the end;
  on any error it is removed. An existing ``OUT_DIR`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from tqdm.auto import tqdm

from ..io.api import Image2D
from ..io.nnunet import DatasetCase, DatasetFolder, read_case_image, read_case_labels, read_dataset
from .import_splits import SPLITS, DatasetImportError, assign_splits, read_split_lists
from .layout import ROBOFLOW_ANNOTATION_NAME

__all__ = ["ImportOptions", "import_dataset", "label_slices"]

logger = logging.getLogger(__name__)

SLICE_AXIS = 2  # the volume's own slice axis: what infer_sam.py's --axis auto slices along
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class ImportOptions:
    """What ``medsam3-import`` was asked to do (stored in the manifest)."""

    channel: int | str | None = None
    cases: list[str] | None = None
    limit: int | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_file: str | None = None
    group: str | None = None
    seed: int = 0
    negative_share: float = 0.1
    semantic: bool = False
    concept_renames: dict[str, str] = field(default_factory=dict)
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    window: str | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class _Category:
    id: int
    name: str
    source_name: str
    values: tuple[int, ...]
    synonyms: list[str]


def _categories(dataset: DatasetFolder, options: ImportOptions) -> list[_Category]:
    names = [c.name for c in dataset.concepts]
    for old in [*options.concept_renames, *options.synonyms]:
        if old not in names and old not in options.concept_renames.values():
            raise DatasetImportError(f"no concept {old!r} in {dataset.root}. Fix: choose one of {names}")
    cats = []
    for i, concept in enumerate(dataset.concepts, start=1):
        name = options.concept_renames.get(concept.name, concept.name)
        synonyms = options.synonyms.get(name, options.synonyms.get(concept.name, []))
        cats.append(_Category(i, name, concept.name, concept.values, list(synonyms)))
    if len({c.name.lower() for c in cats}) < len(cats):
        raise DatasetImportError(
            f"concept names {[c.name for c in cats]} repeat after renaming. Fix: rename to distinct names"
        )
    return cats


def _select_cases(dataset: DatasetFolder, options: ImportOptions) -> list[DatasetCase]:
    cases = [c for c in dataset.cases if c.label is not None]
    unlabelled = len(dataset.cases) - len(cases)
    if unlabelled:
        logger.info("%d unlabelled test case(s) in imagesTs are not imported", unlabelled)
    if options.cases:
        known = {c.name for c in cases}
        unknown = [c for c in options.cases if c not in known]
        if unknown:
            raise DatasetImportError(f"no labelled case {unknown[0]!r} in {dataset.root}. Fix: use names from labelsTr")
        wanted = set(options.cases)
        cases = [c for c in cases if c.name in wanted]
    if options.limit is not None:
        cases = cases[: max(0, options.limit)]
    if not cases:
        raise DatasetImportError(f"{dataset.root}: no labelled case to import. Fix: check --cases/--limit and labelsTr")
    return cases


def label_slices(image: Any, labels: np.ndarray):
    """Yield ``(slice_index, label map in display orientation, volume or None)`` of a case.

    Volumes: every slice along :data:`SLICE_AXIS`, oriented exactly as ``Volume.slice_rgb`` shows it.
    2D images: the label map itself, index 0, and None (the file is copied, not sliced).
    """
    if isinstance(image, Image2D):
        yield 0, labels, None
        return
    geo = image.slice_geometry(SLICE_AXIS)
    for k in range(image.num_slices(SLICE_AXIS)):
        yield k, geo.display_slice(labels, k), image


def _annotations(mask: np.ndarray, semantic: bool) -> list[dict[str, Any]]:
    if semantic:
        parts = [mask]
    else:
        components, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        parts = [components == i for i in range(1, n + 1)]
    out = []
    for part in parts:
        rle = mask_utils.encode(np.asfortranarray(part.astype(np.uint8)))
        out.append(
            {
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(mask_utils.area(rle)),
                "iscrowd": 0,
            }
        )
    return out


class _SplitWriter:
    """One split's COCO file and image folder, filled case by case."""

    def __init__(self, folder: Path, categories: list[_Category]) -> None:
        self.folder = folder
        self.categories = categories
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.cases: list[str] = []
        self.counts: dict[str, dict[str, int]] = {c.name: {"images": 0, "instances": 0} for c in categories}
        self.negatives = 0

    def add(
        self, file_name: str, height: int, width: int, record: dict[str, Any], labels2d: np.ndarray, semantic: bool
    ):
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, **record})
        found = False
        for cat in self.categories:
            mask = np.isin(labels2d, cat.values)
            if not mask.any():
                continue
            found = True
            anns = _annotations(mask, semantic)
            self.counts[cat.name]["images"] += 1
            self.counts[cat.name]["instances"] += len(anns)
            for ann in anns:
                self.annotations.append(
                    {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": cat.id, **ann}
                )
        self.negatives += not found

    def write(self, source: Mapping[str, Any]) -> None:
        coco = {
            "info": {"description": f"imported from {source.get('name')} by medsam3-import", **source},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {
                    "id": c.id,
                    "name": c.name,
                    "supercategory": "concept",
                    "synonyms": c.synonyms,
                    "source_values": list(c.values),
                }
                for c in self.categories
            ],
        }
        (self.folder / ROBOFLOW_ANNOTATION_NAME).write_text(json.dumps(coco), encoding="utf-8")


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset folder when inside it (MSD lists may point elsewhere)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _import_case(
    dataset: DatasetFolder, case: DatasetCase, channel: int, writer: _SplitWriter, options: ImportOptions
) -> None:
    image = read_case_image(dataset, case, channel, options.window)
    labels = read_case_labels(dataset, case, image)
    rng = np.random.default_rng([options.seed, zlib.crc32(case.name.encode())])
    concept_values = np.array(sorted({v for c in writer.categories for v in c.values}))
    source_file = case.images[min(channel, len(case.images) - 1)]
    base = {
        "source_case": case.name,
        "source_subset": case.subset,
        "source_file": _relative(source_file, dataset.root),
        "source_label": _relative(case.label, dataset.root),
        "intensity": image.intensity if isinstance(image, Image2D) else image.intensity_description,
    }
    geo = None if isinstance(image, Image2D) else image.slice_geometry(SLICE_AXIS)
    for k, lab2d, volume in label_slices(image, labels):
        positive = bool(np.isin(lab2d, concept_values).any())
        draw = rng.random()  # drawn for every slice, so the choice does not depend on other slices
        if not positive and draw >= options.negative_share:
            continue
        if volume is None:
            file_name = f"{case.name}{source_file.name[len(case.name) + 5 :]}"  # drop _XXXX, keep the ending
            shutil.copyfile(source_file, writer.folder / file_name)
            record = {**base, "slice_index": None, "slice_axis": None, "slice_spacing": None}
        else:
            file_name = f"{case.name}_z{k:04d}.png"
            Image.fromarray(volume.slice_rgb(k, SLICE_AXIS)[..., 0]).save(writer.folder / file_name)
            rows, cols = (geo.in_plane[1], geo.in_plane[0]) if geo.transpose else geo.in_plane
            record = {
                **base,
                "slice_index": k,
                "slice_axis": SLICE_AXIS,
                "slice_plane": geo.plane,
                "slice_spacing": float(volume.spacing[SLICE_AXIS]),
                "pixel_spacing": [float(volume.spacing[rows]), float(volume.spacing[cols])],
            }
        writer.add(file_name, int(lab2d.shape[0]), int(lab2d.shape[1]), record, lab2d, options.semantic)
    writer.cases.append(case.name)


def _manifest(dataset: DatasetFolder, options: ImportOptions, cats: list[_Category], writers, channel: int) -> dict:
    return {
        "format": "medsam3-import 1",
        "source": {
            "path": str(dataset.root.resolve()),
            "kind": dataset.kind,
            "channel": {"index": channel, "name": dataset.channels[channel]},
            **dataset.source_info(),
        },
        "options": {k: v for k, v in asdict(options).items() if k not in ("overwrite", "progress")},
        "concepts": [asdict(c) for c in cats],
        "slice_axis": SLICE_AXIS,
        "splits": {s: w.cases for s, w in writers.items()},
        "counts": {
            s: {"cases": len(w.cases), "images": len(w.images), "negatives": w.negatives, "concepts": w.counts}
            for s, w in writers.items()
        },
    }


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise DatasetImportError(
            f"{out_dir} already exists. Fix: choose another folder, or pass --overwrite to replace it"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetImportError(f"{out_dir} exists and is not a folder. Fix: choose another output folder")


def import_dataset(dataset_dir: str | Path, out_dir: str | Path, options: ImportOptions | None = None) -> dict:
    """Import ``dataset_dir`` into ``out_dir`` (see the module docstring); returns the manifest."""
    options = options or ImportOptions()
    out_dir = Path(out_dir).expanduser()
    _check_target(out_dir, options.overwrite)
    if not 0.0 <= options.negative_share <= 1.0:
        raise DatasetImportError(f"negative share {options.negative_share} is outside [0, 1]. Fix: e.g. 0.1")
    dataset = read_dataset(dataset_dir)
    channel = dataset.channel_index(options.channel)
    cats = _categories(dataset, options)
    cases = _select_cases(dataset, options)
    explicit = read_split_lists(options.split_file) if options.split_file else None
    if explicit:
        names = {c.name for c in cases}
        explicit = {s: [c for c in listed if c in names] for s, listed in explicit.items()}
    split_of = assign_splits(
        [(c.name, c.subset == "imagesTs") for c in cases],
        group=options.group,
        valid_fraction=options.valid_fraction,
        test_fraction=options.test_fraction,
        seed=options.seed,
        explicit=explicit,
    )
    cases = [c for c in cases if c.name in split_of]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        writers: dict[str, _SplitWriter] = {}
        for split in SPLITS:
            if any(split_of[c.name] == split for c in cases):
                (tmp / split).mkdir()
                writers[split] = _SplitWriter(tmp / split, cats)
        for case in tqdm(cases, desc=f"importing {dataset.name}", unit="case", disable=not options.progress or None):
            _import_case(dataset, case, channel, writers[split_of[case.name]], options)
        source = {
            k: dataset.metadata.get(k) for k in ("name", "licence", "license", "reference") if k in dataset.metadata
        }
        for writer in writers.values():
            writer.write(source)
        manifest = _manifest(dataset, options, cats, writers, channel)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _check_target(out_dir, options.overwrite)  # created meanwhile by someone else?
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("imported %d case(s) of %s into %s", len(cases), dataset.root, out_dir)
    return manifest


def parse_pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["old=new", ...]`` -> ``{old: new}``; a malformed item is a :class:`DatasetImportError`."""
    out: dict[str, str] = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise DatasetImportError(f"{what} {item!r} is not NAME=VALUE. Fix: e.g. --concept 'brain tumor=glioma'")
        out[" ".join(old.split())] = " ".join(new.split())
    return out


def synonyms_from_pairs(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``["name=a,b", ...]`` -> ``{name: [a, b]}``."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for item in items or []:
        for name, values in parse_pairs([item], "--synonyms").items():
            grouped[name] += [v.strip() for v in values.split(",") if v.strip()]
    return dict(grouped)
