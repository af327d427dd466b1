"""Image preprocessing identical to ``Sam3ImageProcessor`` and optional train-time augmentation.

Stored images become RGB through :mod:`medsam3.io`, the readers and intensity windows inference
uses (:func:`load_rgb_image`), so training and ``infer_sam.py`` feed the model the same pixels.

Why re-implement the processor: the dataset runs in DataLoader workers on one image at a time and
needs the resized uint8 image before normalisation (to augment it). The steps are the processor's
own: RGB conversion, ``torchvision`` bilinear resize with antialias on the uint8 tensor to
``resolution x resolution`` (aspect ratio is *not* kept), rescale by 1/255, normalise with
``IMAGENET_STANDARD_MEAN/STD`` (0.5, 0.5). ``tests/data`` checks the result against the processor.

Augmentation works on the already-resized square image in normalised coordinates, so one random
draw moves the image (``resolution``), the masks (``mask_resolution``) and the boxes consistently.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as tvF
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from ..errors import UserError
from ..io.api import load_image2d

__all__ = [
    "AugmentConfig",
    "augment",
    "load_rgb_image",
    "normalize_image",
    "resize_image",
]


def load_rgb_image(path: str | Path) -> Image.Image:
    """A stored image as the model's 8-bit RGB, through the function ``infer_sam.py`` uses.

    :func:`medsam3.io.load_image2d` chooses the intensity mapping from the file (CT DICOM -> HU
    window, 16-bit/float and MR/US -> percentile scaling, 8-bit grey or RGB unchanged, transparency
    composited over black), so a model is trained on exactly the pixels it is later shown. It reads
    every 2D format inference reads (PNG, JPEG, BMP, TIFF, DICOM).
    """
    return Image.fromarray(load_image2d(path, log_level=logging.DEBUG).rgb)


def resize_image(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, resolution, resolution), resized like the SAM3 processor."""
    tensor = tvF.pil_to_tensor(image)
    return tvF.resize(tensor, [resolution, resolution], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 1]) image -> float32 normalised with the processor's mean/std."""
    if image.dtype == torch.uint8:
        image = image.to(torch.float32) / 255.0
    return tvF.normalize(image.to(torch.float32), list(IMAGENET_STANDARD_MEAN), list(IMAGENET_STANDARD_STD))


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation; every field's default means "off".

    * ``hflip_prob`` / ``vflip_prob``: probability of a horizontal / vertical flip.
    * ``scale_range``: ``(lo, hi)`` zoom factor drawn uniformly; > 1 zooms in (crops), < 1 zooms out
      (pads with black). The shifted window stays inside the image when zooming in and the image
      stays inside the canvas when zooming out. Instances pushed out of view are dropped.
    * ``brightness`` / ``contrast``: jitter strength ``b``; the factor is drawn from ``[1-b, 1+b]``.
    """

    hflip_prob: float = 0.0
    vflip_prob: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hflip_prob", "vflip_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"augment.{name} must be in [0, 1], got {value}")
        for name in ("brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"augment.{name} must be in [0, 1), got {value}")
        lo, hi = self.scale_range
        if not (0.0 < lo <= hi and math.isfinite(hi)):
            raise UserError(f"augment.scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a config mapping; unknown keys are an error (a typo must not pass silently)."""
        if config is None:
            return cls()
        allowed = {f.name for f in fields(cls)}
        unknown = set(config) - allowed
        if unknown:
            raise UserError(f"unknown augmentation key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        values = dict(config)
        if "scale_range" in values:
            scale = values["scale_range"]
            if isinstance(scale, (int, float)):
                raise UserError("augment.scale_range must be a pair (lo, hi), e.g. [0.8, 1.2]")
            values["scale_range"] = tuple(float(v) for v in scale)
        return cls(**values)

    @property
    def enabled(self) -> bool:
        return (
            self.hflip_prob > 0
            or self.vflip_prob > 0
            or self.scale_range != (1.0, 1.0)
            or self.brightness > 0
            or self.contrast > 0
        )


def _zoom(
    image: torch.Tensor,
    masks: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    scale: float,
    shift: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map normalised coordinates x -> scale * x + shift on image, masks and boxes."""
    sx, sy = shift
    # grid_sample maps output -> input in [-1, 1] coordinates (align_corners=False).
    theta = torch.tensor(
        [[1 / scale, 0.0, (1 - 2 * sx) / scale - 1], [0.0, 1 / scale, (1 - 2 * sy) / scale - 1]],
        dtype=torch.float32,
    ).unsqueeze(0)
    grid = F.affine_grid(theta, [1, 3, *image.shape[-2:]], align_corners=False)
    image = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if masks.shape[0]:
        mgrid = F.affine_grid(theta, [1, 1, *masks.shape[-2:]], align_corners=False)
        moved = F.grid_sample(
            masks.to(torch.float32).unsqueeze(0), mgrid, mode="nearest", padding_mode="zeros", align_corners=False
        )[0]
        masks = moved > 0.5
    offset = torch.tensor([sx, sy, sx, sy], dtype=boxes_xyxy.dtype)
    boxes_xyxy = (boxes_xyxy * scale + offset).clamp(0.0, 1.0)
    return image, masks, boxes_xyxy


def augment(
    image: torch.Tensor,
    boxes: torch.Tensor,
    masks: torch.Tensor,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply one random draw of ``config`` to a sample.

    Args:
        image: uint8 (3, R, R) resized image.
        boxes: (N, 4) normalised cxcywh boxes of all instances of the image.
        masks: (N, m, m) bool masks of the same instances.
        rng: the sample's generator; the draw order is fixed so a seed reproduces the result.

    Returns ``(image float32 in [0, 1], boxes, masks, keep)`` where ``keep`` (N,) marks instances
    still visible (box at least one image pixel wide and high) after zooming.
    """
    img = image.to(torch.float32) / 255.0 if image.dtype == torch.uint8 else image.to(torch.float32)
    xyxy = box_convert(boxes.to(torch.float32), "cxcywh", "xyxy")
    # Draw every random number up front, in a fixed order, whatever is enabled.
    u_hflip, u_vflip = rng.random(), rng.random()
    scale = float(rng.uniform(*config.scale_range))
    u_shift = rng.random(2)
    brightness = float(rng.uniform(1 - config.brightness, 1 + config.brightness))
    contrast = float(rng.uniform(1 - config.contrast, 1 + config.contrast))

    if u_hflip < config.hflip_prob:
        img, masks = img.flip(-1), masks.flip(-1)
        xyxy = torch.stack([1 - xyxy[:, 2], xyxy[:, 1], 1 - xyxy[:, 0], xyxy[:, 3]], dim=1)
    if u_vflip < config.vflip_prob:
        img, masks = img.flip(-2), masks.flip(-2)
        xyxy = torch.stack([xyxy[:, 0], 1 - xyxy[:, 3], xyxy[:, 2], 1 - xyxy[:, 1]], dim=1)
    if scale != 1.0:
        lo, hi = sorted((0.0, 1.0 - scale))
        shift = (lo + (hi - lo) * float(u_shift[0]), lo + (hi - lo) * float(u_shift[1]))
        img, masks, xyxy = _zoom(img, masks, xyxy, scale, shift)
    if config.brightness > 0:
        img = tvF.adjust_brightness(img, brightness)
    if config.contrast > 0:
        img = tvF.adjust_contrast(img, contrast)

    min_size = 1.0 / image.shape[-1]
    keep = ((xyxy[:, 2] - xyxy[:, 0]) >= min_size) & ((xyxy[:, 3] - xyxy[:, 1]) >= min_size)
    return img.clamp(0.0, 1.0), box_convert(xyxy, "xyxy", "cxcywh"), masks, keep
