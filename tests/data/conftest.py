"""A small COCO dataset drawn with PIL, with geometry known by construction."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

W, H = 80, 60  # image size (width, height)

# Rectangle polygons (x0, y0, x1, y1) in pixel corners; pycocotools fills [x0, x1) x [y0, y1).
# Corners are multiples of (4, 3) so that they fall on pixel edges of a 20x20 target mask.
TUMOR_A = (8, 9, 28, 39)
TUMOR_B = (40, 30, 72, 51)
CYST = (52, 6, 72, 15)  # stored as RLE
SPLEEN = (4, 3, 16, 15)
LIVER_TRIANGLE = [0, 0, 40, 0, 40, 40]


def rect_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_rle(x0: int, y0: int, x1: int, y1: int) -> dict[str, Any]:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@dataclass
class CocoSpec:
    """Mutable description of the JSON; tests edit it before ``write``."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"images": self.images, "annotations": self.annotations, "categories": self.categories}
        path.write_text(json.dumps(data))
        return path


def draw_image(path: Path, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> None:
    """Noisy background plus filled rectangles, saved as PNG (or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for i, (x0, y0, x1, y1) in enumerate(shapes):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(200, 40 + 60 * i, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def standard_spec(image_dir: Path) -> CocoSpec:
    """Three images, categories: 0 Roboflow super-category (unused), 1 tumor, 2 cyst, 3 liver, 4 spleen.

    img1: two tumors (polygons) + a cyst (RLE); img2: a liver triangle; img3: nothing annotated.
    """
    draw_image(image_dir / "img1.png", [TUMOR_A, TUMOR_B, CYST], seed=1)
    draw_image(image_dir / "img2.png", [(0, 0, 40, 40)], seed=2)
    draw_image(image_dir / "img3.png", [], seed=3)
    spec = CocoSpec()
    spec.images = [
        {"id": 1, "file_name": "img1.png", "width": W, "height": H},
        {"id": 2, "file_name": "img2.png", "width": W, "height": H},
        {"id": 3, "file_name": "img3.png", "width": W, "height": H},
    ]
    spec.categories = [
        {"id": 0, "name": "lesions-XYZ", "supercategory": "none"},
        {"id": 1, "name": "tumor", "supercategory": "lesions-XYZ"},
        {"id": 2, "name": "cyst", "supercategory": "lesions-XYZ"},
        {"id": 3, "name": "liver", "supercategory": "lesions-XYZ"},
        {"id": 4, "name": "spleen", "supercategory": "lesions-XYZ"},
    ]
    x0, y0, x1, y1 = TUMOR_A
    spec.annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [rect_polygon(*TUMOR_A)],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": (x1 - x0) * (y1 - y0),
            "iscrowd": 0,
        },
        # No bbox: derived from the polygon.
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [rect_polygon(*TUMOR_B)], "iscrowd": 0},
        {
            "id": 3,
            "image_id": 1,
            "category_id": 2,
            "segmentation": rect_rle(*CYST),
            "bbox": [CYST[0], CYST[1], CYST[2] - CYST[0], CYST[3] - CYST[1]],
            "iscrowd": 0,
        },
        {
            "id": 4,
            "image_id": 2,
            "category_id": 3,
            "segmentation": [LIVER_TRIANGLE],
            "bbox": [0, 0, 40, 40],
            "iscrowd": 0,
        },
    ]
    # spleen (4) needs one annotation somewhere to be a concept: put it on a 4th image.
    draw_image(image_dir / "img4.png", [SPLEEN], seed=4)
    spec.images.append({"id": 4, "file_name": "img4.png", "width": W, "height": H})
    spec.annotations.append(
        {"id": 5, "image_id": 4, "category_id": 4, "segmentation": [rect_polygon(*SPLEEN)], "iscrowd": 0}
    )
    return spec


@pytest.fixture
def roboflow_dir(tmp_path: Path) -> Path:
    """``tmp/dataset/train/_annotations.coco.json`` + images (the upstream layout)."""
    data_dir = tmp_path / "dataset"
    split = data_dir / "train"
    standard_spec(split).write(split / "_annotations.coco.json")
    return data_dir


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers and constants above, for tests (fixtures avoid importing conftest)."""
    return SimpleNamespace(
        W=W,
        H=H,
        TUMOR_A=TUMOR_A,
        TUMOR_B=TUMOR_B,
        CYST=CYST,
        SPLEEN=SPLEEN,
        LIVER_TRIANGLE=LIVER_TRIANGLE,
        CocoSpec=CocoSpec,
        rect_polygon=rect_polygon,
        rect_rle=rect_rle,
        draw_image=draw_image,
        standard_spec=standard_spec,
    )
