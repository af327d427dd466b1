"""Augmentation moves image, boxes and masks together, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam3.data import AugmentConfig, CocoConceptDataset, augment, resolve_split

M = 20


def _pair(data_dir, augment_cfg, **kwargs):
    paths = resolve_split(data_dir, "train")
    common = dict(resolution=56, mask_resolution=M, num_negatives=1, seed=3, **kwargs)
    plain = CocoConceptDataset(paths.annotation_file, paths.image_root, **common)
    aug = CocoConceptDataset(paths.annotation_file, paths.image_root, augment=augment_cfg, **common)
    return plain, aug


def test_off_by_default_and_config_validation():
    assert not AugmentConfig().enabled
    assert AugmentConfig.from_dict({"hflip_prob": 0.5}).enabled
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig.from_dict({"hflip": 0.5})
    with pytest.raises(ValueError):
        AugmentConfig.from_dict({"vflip_prob": 1.5})
    with pytest.raises(ValueError):
        AugmentConfig.from_dict({"scale_range": [1.2, 0.8]})


def test_hflip_moves_boxes_masks_and_pixels(roboflow_dir):
    plain, flipped = _pair(roboflow_dir, {"hflip_prob": 1.0})
    idx = plain.image_ids.index(1)
    a, b = plain[idx], flipped[idx]
    torch.testing.assert_close(b["pixel_values"], a["pixel_values"].flip(-1), atol=1e-6, rtol=0)
    for qa, qb in zip(a["queries"], b["queries"]):
        assert qa["prompt"] == qb["prompt"]
        expected = qa["boxes"].clone()
        expected[:, 0] = 1 - expected[:, 0]
        torch.testing.assert_close(qb["boxes"], expected)
        assert torch.equal(qb["masks"], qa["masks"].flip(-1))


def test_vflip(roboflow_dir):
    plain, flipped = _pair(roboflow_dir, {"vflip_prob": 1.0})
    a, b = plain[0], flipped[0]
    q_a, q_b = a["queries"][0], b["queries"][0]
    torch.testing.assert_close(q_b["boxes"][:, 1], 1 - q_a["boxes"][:, 1])
    assert torch.equal(q_b["masks"], q_a["masks"].flip(-2))


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    m = mask.shape[-1]
    return torch.tensor([xs.min() / m, ys.min() / m, (xs.max() + 1) / m, (ys.max() + 1) / m])


@pytest.mark.parametrize("scale", [(1.5, 1.5), (0.6, 0.6)])
def test_scale_jitter_keeps_boxes_on_masks(roboflow_dir, scale):
    plain, zoomed = _pair(roboflow_dir, {"scale_range": scale, "brightness": 0.3, "contrast": 0.3})
    for epoch in range(3):
        zoomed.set_epoch(epoch)
        sample = zoomed[zoomed.image_ids.index(1)]
        for q in sample["queries"]:
            for box, mask in zip(q["boxes"], q["masks"]):
                if mask.sum() < 4:
                    continue
                cx, cy, w, h = box.tolist()
                xyxy = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                torch.testing.assert_close(xyxy, _mask_box(mask), atol=1.5 / M, rtol=0)
    # Zooming in (or out) changes apparent size by the factor.
    a = plain[plain.image_ids.index(1)]["queries"][0]["masks"][0].sum().item()
    zoomed.set_epoch(0)
    b = zoomed[zoomed.image_ids.index(1)]["queries"][0]["masks"]
    if b.shape[0] and scale[0] < 1:
        assert b[0].sum().item() == pytest.approx(a * scale[0] ** 2, rel=0.35)


def test_augmentation_is_reproducible_per_seed_and_epoch(roboflow_dir):
    cfg = {"hflip_prob": 0.5, "vflip_prob": 0.5, "scale_range": [0.7, 1.3], "brightness": 0.2, "contrast": 0.2}
    _, one = _pair(roboflow_dir, cfg)
    _, two = _pair(roboflow_dir, cfg)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        two.set_epoch(epoch)
        assert torch.equal(one[0]["pixel_values"], two[0]["pixel_values"])
    one.set_epoch(0)
    first = one[0]["pixel_values"]
    differs = False
    for epoch in range(1, 6):
        one.set_epoch(epoch)
        differs |= not torch.equal(one[0]["pixel_values"], first)
    assert differs


def test_instances_zoomed_out_of_view_are_dropped():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    boxes = torch.tensor([[0.05, 0.05, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]])  # corner, centre
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 4:6, 4:6] = True
    cfg = AugmentConfig(scale_range=(3.0, 3.0))

    class MidpointRng:
        """Every uniform draw at its midpoint: shift = -1, i.e. the window [1/3, 2/3]."""

        def random(self, size=None):
            return 0.5 if size is None else np.full(size, 0.5)

        def uniform(self, lo, hi):
            return (lo + hi) / 2

    _, out_boxes, out_masks, keep = augment(image, boxes, masks, cfg, MidpointRng())
    assert keep.tolist() == [False, True]
    torch.testing.assert_close(out_boxes[1], torch.tensor([0.5, 0.5, 0.6, 0.6]))
    assert out_masks[1].sum() == 36  # 2x2 pixels zoomed 3x
