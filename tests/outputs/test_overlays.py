"""Overlays readable from 96 px to 4,000 px: enlarged when small, text scaled, legend beside the picture."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.inference.postprocess import Detections
from medsam3.outputs import PALETTE, overlay_detections


def _disc_detections(h: int, w: int, prompts=("liver", "left kidney", "tumor")) -> list[Detections]:
    yy, xx = np.mgrid[:h, :w]
    out = []
    for k, prompt in enumerate(prompts):
        cy, cx = (0.1 + 0.3 * k) * h, (0.3 + 0.2 * k) * w  # the first touches the top edge
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.1 * min(h, w)) ** 2
        ys, xs = np.nonzero(mask)
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        out.append(Detections(prompt, box, np.array([0.9 - 0.1 * k], np.float32), mask[None]))
    return out


def _image(h: int, w: int) -> np.ndarray:
    return (np.random.default_rng(0).random((h, w, 3)) * 120 + 60).astype(np.uint8)


@pytest.mark.parametrize("h, w", [(96, 96), (128, 128), (90, 130), (2048, 2048), (4000, 3000)])
def test_text_and_legend_keep_their_share_of_the_picture_at_any_size(h, w):
    dets = _disc_detections(h, w)
    out = overlay_detections(_image(h, w), dets)
    factor = out.width // w
    assert out.width == w * factor and factor == (1 if min(h, w) >= 512 else -(-512 // min(h, w)))
    picture_h = h * factor
    legend_row = (out.height - picture_h) / len(dets)
    # one legend row per prompt, 2.5-7% of the picture's shorter side whatever the input size
    assert 0.025 <= legend_row / min(picture_h, w * factor) <= 0.07, legend_row
    assert min(picture_h, w * factor) >= 512 or factor == 8


def test_the_legend_never_covers_the_picture():
    h, w = 128, 128
    image = _image(h, w)
    dets = _disc_detections(h, w)
    out = np.asarray(overlay_detections(image, dets, show_boxes=False))
    # the picture part is the blended image, enlarged pixel by pixel (independent blend here)
    blended = image.astype(np.float64)
    for k, det in enumerate(dets):
        union = det.masks.any(axis=0)
        blended[union] = 0.55 * blended[union] + 0.45 * np.array(PALETTE[k])
    expected = np.repeat(np.repeat(blended.round().astype(np.uint8), 4, axis=0), 4, axis=1)
    np.testing.assert_allclose(out[: h * 4].astype(int), expected.astype(int), atol=1)
    legend = out[h * 4 :]
    for k in range(len(dets)):  # every prompt's colour appears in the strip below
        assert (legend == np.array(PALETTE[k], np.uint8)).all(axis=-1).sum() > 50


def test_box_labels_stay_on_the_picture_and_in_their_colour():
    h, w = 96, 96
    dets = _disc_detections(h, w)
    out = np.asarray(overlay_detections(_image(h, w), dets))
    picture = out[: h * 6]
    for k in range(len(dets)):  # each label background (a filled box in the prompt's colour) is drawn
        assert (picture == np.array(PALETTE[k], np.uint8)).all(axis=-1).sum() > 200
    # the first box touches the top edge: its label goes inside the box, not above the picture
    x1, y1, x2, y2 = (dets[0].boxes[0] * 6).astype(int)
    inside = picture[y1 : y1 + 40, x1 : x2 + 1]
    assert (inside == np.array(PALETTE[0], np.uint8)).all(axis=-1).mean() > 0.2


def test_labels_of_coinciding_boxes_do_not_hide_each_other():
    h, w = 128, 128
    mask = np.zeros((h, w), bool)
    mask[40:90, 30:100] = True
    box = np.array([[30, 40, 100, 90]], np.float32)
    dets = [Detections(p, box, np.array([0.5], np.float32), mask[None]) for p in ("liver", "left kidney", "tumor")]
    picture = np.asarray(overlay_detections(_image(h, w), dets))[: h * 4]
    # the outlines coincide (the last one drawn covers the others): the colours left are the labels'
    for k in range(len(dets)):
        assert (picture == np.array(PALETTE[k], np.uint8)).all(axis=-1).sum() > 300, dets[k].prompt
