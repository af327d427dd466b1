"""Overlays a person can read: masks in distinct colours, boxes, prompt + score labels, a legend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # annotations only: outputs is a leaf
    from ..inference.postprocess import Detections

__all__ = ["PALETTE", "label_montage", "overlay_detections", "overlay_labels"]

# Tableau-10: distinct and readable on grayscale scans.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, font, pad: int) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=color)
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def overlay_detections(image: np.ndarray, results: Sequence[Detections], alpha: float = 0.45,
                       show_boxes: bool = True) -> Image.Image:
    """Draw every prompt's masks, boxes and scores on ``image`` (H, W, 3 uint8) with a legend."""
    canvas = image.astype(np.float32).copy()
    for k, det in enumerate(results):
        color = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        if len(det):
            union = det.masks.any(axis=0)
            canvas[union] = (1 - alpha) * canvas[union] + alpha * color
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    height, width = image.shape[:2]
    size = max(10, round(min(height, width) / 40))
    font, pad, line = _font(size), max(1, size // 5), max(1, size // 6)
    if show_boxes:
        for k, det in enumerate(results):
            color = PALETTE[k % len(PALETTE)]
            for box, score in zip(det.boxes, det.scores):
                x1, y1, x2, y2 = (float(v) for v in box)
                draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
                _label(draw, (x1 + pad, max(0.0, y1 - size - 2 * pad)), f"{det.prompt} {score:.2f}", color, font,
                       pad)
    # Legend: one row per prompt, with its detection count, top-left.
    y = pad
    for k, det in enumerate(results):
        color = PALETTE[k % len(PALETTE)]
        best = f", best {det.scores.max():.2f}" if len(det) else ""
        _label(draw, (pad * 2, y + pad), f"{det.prompt}: {len(det)} found{best}", color, font, pad)
        y += size + 4 * pad
    return out


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour each label value ``v > 0`` of a 2D label map with ``PALETTE[v - 1]`` on ``image``."""
    canvas = image.astype(np.float32).copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        color = np.array(PALETTE[(int(value) - 1) % len(PALETTE)], dtype=np.float32)
        where = labels == value
        canvas[where] = (1 - alpha) * canvas[where] + alpha * color
    return canvas.clip(0, 255).astype(np.uint8)


def label_montage(tiles: Sequence[np.ndarray], captions: Sequence[str], names: Sequence[str],
                  columns: int | None = None, gap: int = 4, min_tile: int = 192) -> Image.Image:
    """Tiles (H, W, 3 uint8, same size) in a grid with a caption each and a legend of ``names``
    (label value ``i + 1`` = ``names[i]``, coloured as in :func:`overlay_labels`). Small tiles are
    enlarged by an integer factor (nearest neighbour) to at least ``min_tile`` pixels."""
    if not tiles:
        raise ValueError("label_montage needs at least one tile")
    factor = min(8, max(1, -(-min_tile // min(tiles[0].shape[:2]))))
    if factor > 1:
        tiles = [np.repeat(np.repeat(t, factor, axis=0), factor, axis=1) for t in tiles]
    height, width = tiles[0].shape[:2]
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    size = max(10, round(min(height, width) / 16))
    font, pad = _font(size), max(1, size // 5)
    legend_h = len(names) * (size + 4 * pad) + 2 * pad
    sheet = Image.new("RGB", (columns * width + (columns + 1) * gap, rows * height + (rows + 1) * gap + legend_h))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = gap + (i % columns) * (width + gap)
        y = gap + (i // columns) * (height + gap)
        sheet.paste(Image.fromarray(tile), (x, y))
        _label(draw, (x + 2 * pad, y + 2 * pad), caption, (0, 0, 0), font, pad)
    y = rows * height + (rows + 1) * gap + pad
    for k, name in enumerate(names):
        _label(draw, (gap + 2 * pad, y + pad), f"{k + 1}: {name}", PALETTE[k % len(PALETTE)], font, pad)
        y += size + 4 * pad
    return sheet
