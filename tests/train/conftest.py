"""A small generated COCO dataset with two concepts of different shapes, and tiny training configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from tests.conftest import write_config

SHAPES_W, SHAPES_H = 96, 80
# (concept, centre x, centre y, half size): one shape per image so every image has 1 positive + 1 negative.
SHAPE_LAYOUT = [
    ("lesion", 30, 28, 16),
    ("kidney", 62, 46, 15),
    ("lesion", 60, 50, 18),
    ("kidney", 32, 30, 14),
    ("lesion", 48, 40, 20),
    ("kidney", 50, 38, 19),
    ("lesion", 26, 52, 14),
    ("kidney", 70, 26, 13),
]


def _draw(concept: str, cx: int, cy: int, r: int, seed: int) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 70, size=(SHAPES_H, SHAPES_W, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    mask = Image.new("L", (SHAPES_W, SHAPES_H), 0)
    box = [cx - r, cy - r, cx + r - 1, cy + r - 1]
    for target, value in (
        (ImageDraw.Draw(img), (230, 200, 60) if concept == "lesion" else (60, 200, 230)),
        (ImageDraw.Draw(mask), 255),
    ):
        (target.ellipse if concept == "lesion" else target.rectangle)(box, fill=value)
    return img, np.asarray(mask) > 0


def make_shapes_dataset(root: Path, layout=SHAPE_LAYOUT, split: str = "train") -> Path:
    """Roboflow layout ``root/<split>/_annotations.coco.json``: discs are 'lesion', squares 'kidney'."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    cats = [
        {"id": 0, "name": "shapes", "supercategory": "none"},
        {"id": 1, "name": "lesion", "supercategory": "shapes"},
        {"id": 2, "name": "kidney", "supercategory": "shapes"},
    ]
    cat_id = {"lesion": 1, "kidney": 2}
    images, anns = [], []
    for i, (concept, cx, cy, r) in enumerate(layout, start=1):
        img, mask = _draw(concept, cx, cy, r, seed=i)
        name = f"img{i}.png"
        img.save(folder / name)
        images.append({"id": i, "file_name": name, "width": SHAPES_W, "height": SHAPES_H})
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = [float(v) for v in mask_utils.toBbox(rle)]
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": cat_id[concept],
                "segmentation": rle,
                "bbox": [x, y, w, h],
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
        )
    (folder / "_annotations.coco.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, split="train")
    make_shapes_dataset(root, split="valid")
    return root


# A fast, deterministic training setup for the tiny model; tests override single keys.
TINY_TRAINING = dict(
    batch_size=2,
    num_workers=0,
    learning_rate=1e-3,
    weight_decay=0.0,
    num_epochs=1,
    warmup_steps=0,
    lr_scheduler="constant",
    logging_steps=1,
    eval_steps=1000,
    save_steps=1000,
    save_total_limit=3,
    mixed_precision="no",
    seed=0,
    gradient_accumulation_steps=1,
    num_negatives=1,
    max_grad_norm=1.0,
)


def tiny_train_config(tmp_path: Path, checkpoint: Path, data_dir: Path, training=None, **sections) -> Path:
    cfg = {
        "training": {**TINY_TRAINING, "data_dir": str(data_dir), **(training or {})},
        "hardware": {"device": "cpu", "dataloader_pin_memory": False, **sections.pop("hardware", {})},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, **sections.pop("lora", {})},
    }
    for name, values in sections.items():
        cfg[name] = values
    path = write_config(tmp_path / "train.yaml", checkpoint, **cfg)
    return path


def build_learnable_tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """The tiny SAM3 with PyTorch's default Linear init instead of transformers' std=0.02.

    At std 0.02 the 32-wide tiny model's three-layer heads output ~1e-4 and its presence token barely
    depends on the prompt, so it learns "which concept is here" far too slowly for a CPU test. A
    real SAM3 checkpoint is pretrained; this only makes the random stand-in trainable.
    """
    import torch
    from transformers import Sam3Model

    from medsam3.testing import build_tiny_checkpoint

    build_tiny_checkpoint(out_dir, seed=seed)
    model = Sam3Model.from_pretrained(out_dir)
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def learnable_checkpoint(tmp_path_factory) -> Path:
    return build_learnable_tiny_checkpoint(tmp_path_factory.mktemp("tiny_learnable"))


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every training test runs single-threaded (tests/conftest.py)."""
