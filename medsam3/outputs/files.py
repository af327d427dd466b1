"""Files that are whole or absent: every output is written beside its target and renamed into place.

An interrupted run (Ctrl-C, a crash, a killed rank) leaves the previous file or none, never half a
file, which is what lets batches resume with ``--skip-existing``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import disk_full_errors

__all__ = ["atomic_path", "save_png", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same extension) that replaces ``path`` when the block ends.

    A reader never sees a half-written file, and an interrupted write leaves the previous file
    (or none) in place: ``with atomic_path(p) as tmp: image.save(tmp)``. A full disk raises
    :class:`medsam3.errors.DiskFullError` naming ``path`` (checked before the partial file is removed).
    """
    path = Path(path)
    with disk_full_errors(path, "the output"):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}_{path.name}")
    try:
        with disk_full_errors(path, "the output"):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(data, path: str | Path) -> Path:
    """Write ``data`` as JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image or uint8 array atomically (format from the extension, PNG when there is none)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format=None if tmp.suffix else "PNG")
    return Path(path)
