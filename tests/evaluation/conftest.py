"""The evaluation tests' data set: a tiny 2D COCO split and two NIfTI cases with known components."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import run_cli

SIZE = 64
AFFINE = np.array([[0.8, 0, 0, -20.0], [0, 0.9, 0, 10.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
LABEL_PROMPTS = {"1": "liver", "2": "spleen"}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _image(seed: int, masks: list[np.ndarray]) -> np.ndarray:
    rng = np.random.RandomState(seed)
    img = (rng.rand(SIZE, SIZE, 3) * 50 + 40).astype(np.uint8)
    for k, m in enumerate(masks):
        img[m] = (200 - 60 * k, 180, 160 + 40 * k)
    return img


def _box_mask(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1, c0:c1] = True
    return m


# a.png: liver in two components (big rows 10-29 x cols 12-39, small rows 45-49 x cols 50-54), kidney disc
BIG, SMALL = _box_mask(10, 30, 12, 40), _box_mask(45, 50, 50, 55)
BIG_BOX = [12.0, 10.0, 40.0, 30.0]


def make_coco(root: Path, corrupt: bool = False) -> Path:
    """Roboflow layout root/test/_annotations.coco.json: 3 images, liver + kidney (prompt 'left kidney')."""
    split = root / "test"
    split.mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 40) ** 2 + (xx - 20) ** 2 < 8**2
    specs = {
        "a.png": [(1, BIG), (1, SMALL), (2, disc)],
        "b.png": [(1, _box_mask(20, 44, 20, 50)), (2, _box_mask(5, 15, 5, 20))],
        "c.png": [(1, _box_mask(30, 60, 30, 60))],  # kidney absent here
    }
    images, anns = [], []
    for i, (name, inst) in enumerate(specs.items(), start=1):
        Image.fromarray(_image(i, [m for _, m in inst])).save(split / name)
        images.append({"id": i, "file_name": name, "height": SIZE, "width": SIZE})
        for cat, m in inst:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "segmentation": _rle(m),
                    "area": float(m.sum()),
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                }
            )
    # b.png's liver also as a polygon, to exercise polygons (inside the box mask already)
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": 2,
            "category_id": 1,
            "segmentation": [[22, 22, 30, 22, 30, 30, 22, 30]],
            "area": 64.0,
            "bbox": [22, 22, 8, 8],
            "iscrowd": 0,
        }
    )
    if corrupt:
        (split / "broken.png").write_bytes(b"this is not a png")
        images.append({"id": 9, "file_name": "broken.png", "height": SIZE, "width": SIZE})
        anns.append(
            {
                "id": 99,
                "image_id": 9,
                "category_id": 1,
                "segmentation": _rle(BIG),
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
        )
    cats = [
        {"id": 0, "name": "organs", "supercategory": "none"},
        {"id": 1, "name": "liver"},
        {"id": 2, "name": "kidney", "prompt": "left kidney"},
    ]
    path = split / "_annotations.coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def make_volume(
    image_dir: Path, label_dir: Path, name: str = "case1", depth: int = 8, label_shape: tuple | None = None
) -> tuple[Path, Path]:
    """A 64x64xdepth volume (anisotropic spacing, non-trivial display reorientation) + label map.

    Label 1 in slices 2-5, with two components of different size on slice 4; label 2 in slices 3-6;
    slices 0, 1 and 7 are empty (text only in text+box).
    """
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((SIZE, SIZE, depth), np.uint8)
    labels[10:40, 15:35, 2:6] = 1
    labels[50:54, 50:60, 4] = 1  # small second component on slice 4
    labels[40:60, 5:20, 3:7] = 2
    rng = np.random.RandomState(0)
    data = (rng.rand(SIZE, SIZE, depth) * 100).astype(np.float32) + 400 * (labels == 1) + 800 * (labels == 2)
    img_path, lab_path = image_dir / f"{name}_0000.nii.gz", label_dir / f"{name}.nii.gz"
    nib.Nifti1Image(data, AFFINE).to_filename(img_path)
    if label_shape is not None:
        labels = np.zeros(label_shape, np.uint8)
    nib.Nifti1Image(labels, AFFINE).to_filename(lab_path)
    return img_path, lab_path


def make_eval_set(root: Path, corrupt: bool = False) -> list:
    """A 2D COCO set (3 images; + an unreadable one with ``corrupt``) and two 3D cases: CLI arguments naming them."""
    coco = make_coco(root / "coco", corrupt=corrupt)
    images, labels = root / "imagesTs", root / "labelsTs"
    make_volume(images, labels, "case1")
    make_volume(images, labels, "case2", depth=6)
    prompts = root / "labels.json"
    prompts.write_text(json.dumps(LABEL_PROMPTS))
    return ["--coco", coco, "--image-dir", images, "--label-dir", labels, "--label-prompts", prompts]


def run_evaluate(config, *args) -> int:
    """medsam3-evaluate in-process on ``config`` with the base model only, quiet; its exit code."""
    from medsam3.cli.evaluate import main

    return run_cli("--config", config, "--weights", "none", "-q", *args, main=main)
