"""Where a split's COCO annotation file and images live.

Two layouts are understood:

* **Roboflow export** (what upstream MedSAM3 reads): ``data_dir/{train,valid,test}/_annotations.coco.json``
  with the images beside the JSON file.
* **Plain COCO**: an annotation file plus an image root, either given explicitly or found by the usual
  conventions (``data_dir/annotations/instances_<split>.json`` with images in ``data_dir/<split>``,
  ``data_dir/images/<split>`` or ``data_dir/images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputNotFoundError

__all__ = ["ROBOFLOW_ANNOTATION_NAME", "SplitPaths", "resolve_split"]

ROBOFLOW_ANNOTATION_NAME = "_annotations.coco.json"

# Roboflow says "valid", COCO says "val": accept either spelling for the validation split.
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "valid": ("valid", "val", "validation"),
    "val": ("valid", "val", "validation"),
    "validation": ("valid", "val", "validation"),
    "test": ("test",),
}


@dataclass(frozen=True)
class SplitPaths:
    """A resolved split: the COCO JSON file and the folder ``file_name`` entries are relative to."""

    annotation_file: Path
    image_root: Path
    layout: str  # "roboflow" or "coco"


def _names(split: str) -> tuple[str, ...]:
    return _SPLIT_ALIASES.get(split, (split,))


def resolve_split(
    data_dir: str | Path | None = None,
    split: str = "train",
    *,
    annotation_file: str | Path | None = None,
    image_root: str | Path | None = None,
) -> SplitPaths:
    """Find ``(annotation_file, image_root)`` for ``split``.

    Resolution order, first match wins:

    1. ``annotation_file`` given: plain COCO. ``image_root`` defaults to the JSON file's folder.
    2. ``data_dir`` is itself a Roboflow split folder (holds ``_annotations.coco.json``).
    3. Roboflow layout: ``data_dir/<split>/_annotations.coco.json`` (``valid``/``val`` are aliases).
    4. Plain COCO conventions under ``data_dir``: ``annotations/{instances_,}<split>{,2017}.json`` with
       images in ``image_root`` if given, else the first existing of ``<split>{,2017}/``,
       ``images/<split>/``, ``images/``, ``data_dir``.

    Raises ``FileNotFoundError`` naming every place that was looked at.
    """
    if annotation_file is not None:
        ann = Path(annotation_file).expanduser()
        if not ann.is_file():
            raise InputNotFoundError(f"COCO annotation file not found: {ann}")
        root = Path(image_root).expanduser() if image_root is not None else ann.parent
        if not root.is_dir():
            raise InputNotFoundError(f"image root for {ann} is not a directory: {root}")
        return SplitPaths(ann, root, "coco")
    if data_dir is None:
        raise ValueError("resolve_split needs data_dir or annotation_file")

    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise InputNotFoundError(f"data directory not found: {base}")
    tried: list[Path] = []

    direct = base / ROBOFLOW_ANNOTATION_NAME
    tried.append(direct)
    if direct.is_file():
        root = Path(image_root).expanduser() if image_root is not None else base
        return SplitPaths(direct, root, "roboflow")

    for name in _names(split):
        candidate = base / name / ROBOFLOW_ANNOTATION_NAME
        tried.append(candidate)
        if candidate.is_file():
            root = Path(image_root).expanduser() if image_root is not None else candidate.parent
            return SplitPaths(candidate, root, "roboflow")

    for name in _names(split):
        for stem in (f"instances_{name}", name, f"instances_{name}2017", f"{name}2017"):
            candidate = base / "annotations" / f"{stem}.json"
            tried.append(candidate)
            if not candidate.is_file():
                continue
            if image_root is not None:
                root = Path(image_root).expanduser()
            else:
                options = [base / name, base / f"{name}2017", base / "images" / name, base / "images", base]
                root = next(p for p in options if p.is_dir())
            return SplitPaths(candidate, root, "coco")

    listing = "\n  ".join(str(p) for p in tried)
    raise InputNotFoundError(
        f"no COCO annotations for split {split!r} under {base}. Looked for:\n  {listing}\n"
        "Use the Roboflow layout (data_dir/<split>/_annotations.coco.json) or pass annotation_file= "
        "and image_root= explicitly."
    )
