"""Overlays a person can read: masks in distinct colours, boxes, prompt + score labels, a legend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detections import Detections


__all__ = ["PALETTE", "label_montage", "overlay_detections", "overlay_labels", "text_size", "upscale_factor"]

# Tableau-10: distinct and readable on grayscale scans.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


# Overlay geometry. A picture whose shorter side is under MIN_SIDE px is enlarged by an integer
# factor (nearest neighbour: each pixel stays a sharp square) so that text of a readable size covers
# little of it; text then scales with the picture (1/TEXT_FRACTION of its shorter side, at least
# MIN_TEXT px). From a 96 px image (x6 -> 576 px, 14 px text) to a 4,000 px one (100 px text), the
# labels are about the same fraction of the picture. The legend sits in a strip below the picture.
MIN_SIDE = 512
MAX_UPSCALE = 8
TEXT_FRACTION = 40
MIN_TEXT = 12
LEGEND_BACKGROUND = (24, 24, 24)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _text_color(background) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (sRGB relative luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else (255, 255, 255)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, font, pad: int) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=color)
    draw.text(xy, text, fill=_text_color(color), font=font)


def upscale_factor(height: int, width: int, min_side: int = MIN_SIDE, max_factor: int = MAX_UPSCALE) -> int:
    """The integer factor that brings the shorter side to at least ``min_side`` (1 for large images)."""
    return int(min(max_factor, max(1, -(-min_side // max(1, min(height, width))))))


def text_size(height: int, width: int) -> int:
    """Font size in pixels for a picture of this size (after enlargement)."""
    return max(MIN_TEXT, round(min(height, width) / TEXT_FRACTION))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _box_label(draw, box, text: str, color, font, size: int, pad: int, width: int, height: int, placed: list) -> None:
    """Above the box's top-left corner, or inside it when there is no room above; kept on the picture,
    and moved down, a row at a time, off the labels already ``placed`` (boxes of several prompts
    often coincide)."""
    tw = draw.textlength(text, font=font)
    x = min(max(float(box[0]) + pad, pad), max(pad, width - tw - 2 * pad))
    y = float(box[1]) - size - 3 * pad
    if y < pad:
        y = float(box[1]) + 2 * pad
    lowest = max(pad, height - size - 3 * pad)
    y, step = min(y, lowest), size + 3 * pad
    for _ in range(32):
        rect = draw.textbbox((x, y), text, font=font)
        rect = (rect[0] - pad, rect[1] - pad, rect[2] + pad, rect[3] + pad)
        if not any(_overlaps(rect, other) for other in placed) or y + step > lowest:
            break
        y += step
    placed.append(rect)
    _label(draw, (x, y), text, color, font, pad)


def overlay_detections(
    image: np.ndarray,
    results: Sequence[Detections],
    alpha: float = 0.45,
    show_boxes: bool = True,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Draw every prompt's masks, boxes and scores on ``image`` (H, W, 3 uint8), with a legend below it.

    Readable at any size: a small image is enlarged by an integer factor (:func:`upscale_factor`,
    nearest neighbour) to at least ``min_side`` px, text scales with the picture (:func:`text_size`),
    and the legend (one row per prompt: colour, detections, best score) is a strip under the picture,
    so it never hides the image or the box labels. The overlay is a picture for people; masks at the
    image's own resolution are in ``--json`` / ``--masks-dir``.
    """
    canvas = np.ascontiguousarray(image[..., :3], dtype=np.uint8).copy()
    for k, det in enumerate(results):
        if len(det):
            union = det.masks.any(axis=0)
            color = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
            canvas[union] = ((1 - alpha) * canvas[union] + alpha * color).round().clip(0, 255).astype(np.uint8)
    height, width = canvas.shape[:2]
    factor = upscale_factor(height, width, min_side)
    if factor > 1:
        canvas = np.repeat(np.repeat(canvas, factor, axis=0), factor, axis=1)
    height, width = canvas.shape[:2]
    size = text_size(height, width)
    font, pad, line = _font(size), max(2, size // 5), max(1, size // 6)
    row = size + 4 * pad
    out = Image.new("RGB", (width, height + len(results) * row + 2 * pad), LEGEND_BACKGROUND)
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    if show_boxes:  # all boxes, then all labels: no line crosses a label
        for k, det in enumerate(results):
            for box in det.boxes:
                draw.rectangle([float(v) * factor for v in box], outline=PALETTE[k % len(PALETTE)], width=line)
        placed: list = []
        for k, det in enumerate(results):
            for box, score in zip(det.boxes, det.scores):
                corner = (float(box[0]) * factor, float(box[1]) * factor)
                text = f"{det.prompt}{'?' if det.unknown_concept else ''} {score:.2f}"
                _box_label(draw, corner, text, PALETTE[k % len(PALETTE)], font, size, pad, width, height, placed)
    y = height + pad
    for k, det in enumerate(results):  # the legend, below the picture
        color = PALETTE[k % len(PALETTE)]
        draw.rectangle((2 * pad, y + pad, 2 * pad + size, y + pad + size), fill=color)
        best = f", best {det.scores.max():.2f}" if len(det) else ""
        draw.text((4 * pad + size, y + pad), f"{det.label}: {len(det)} found{best}", fill=(255, 255, 255), font=font)
        y += row
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


def label_montage(
    tiles: Sequence[np.ndarray],
    captions: Sequence[str],
    names: Sequence[str],
    columns: int | None = None,
    gap: int = 4,
    min_tile: int = 192,
) -> Image.Image:
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
