"""3D clean-up, axis choice and label assignment of volume inference (model-free parts)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsam3.errors import UserError
from medsam3.inference.postprocess import Detections
from medsam3.inference.postprocess3d import (
    clean_mask,
    fill_holes,
    keep_largest_component,
    largest_component_flags,
    voxel_volume_ml,
)
from medsam3.inference.volume import resolve_axis, segment_volume
from medsam3.io import Volume, choose_intensity


def test_keep_largest_component_and_connectivity():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[6:8, 6:8, 6:8] = True  # 8 voxels
    mask[4, 4, 4] = True  # touches the big cube only at a corner
    big = keep_largest_component(mask)
    assert big.sum() == 28 and big[4, 4, 4] and not big[6, 6, 6]  # 26-connectivity joins the corner voxel
    six = keep_largest_component(mask, connectivity=1)
    assert six.sum() == 27 and not six[4, 4, 4]
    assert not keep_largest_component(np.zeros((3, 3, 3), bool)).any()
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_component(mask, connectivity=4)


def test_largest_component_flags_per_prompt():
    prompts = ["liver", "Left Kidney", "tumor"]
    assert largest_component_flags(True, prompts) == [True, True, True]
    assert largest_component_flags(False, prompts) == [False, False, False]
    assert largest_component_flags([" LIVER", "left kidney"], prompts) == [True, True, False]
    assert largest_component_flags([], prompts) == [False, False, False]
    with pytest.raises(UserError, match=r"'spleen'.*liver, Left Kidney, tumor"):
        largest_component_flags(["liver", "spleen"], prompts)


def test_fill_holes_3d_and_order():
    shell = np.zeros((9, 9, 9), bool)
    shell[2:7, 2:7, 2:7] = True
    shell[3:6, 3:6, 3:6] = False  # enclosed cavity of 27 voxels
    assert fill_holes(shell).sum() == 125
    tube = shell.copy()
    tube[3:6, 3:6, :] = False  # open at both ends: nothing enclosed in 3D
    np.testing.assert_array_equal(fill_holes(tube), tube)
    stray = shell.copy()
    stray[0, 0, 0] = True
    np.testing.assert_array_equal(
        clean_mask(stray, largest_component=True, holes=True), ndimage.binary_fill_holes(shell)
    )
    assert voxel_volume_ml((0.8, 0.8, 2.5)) == pytest.approx(0.0016)


def _volume(affine, shape=(6, 5, 4)):
    data = np.zeros(shape, np.float32)
    return Volume(
        data=data,
        affine=affine,
        spacing=(1.0, 1.0, 1.0),
        modality=None,
        intensity=choose_intensity(data.astype(np.uint8)),
    )


def test_resolve_axis():
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # voxel 1 runs along S/I
    vol = _volume(coronal)
    assert resolve_axis(vol, None) == resolve_axis(vol, "auto") == 2
    assert resolve_axis(vol, "axial") == 1 and resolve_axis(vol, "coronal") == 2
    assert resolve_axis(vol, "sagittal") == 0 and resolve_axis(vol, "1") == 1 and resolve_axis(vol, -1) == 2
    with pytest.raises(ValueError, match="axial"):
        resolve_axis(vol, "oblique")
    with pytest.raises(ValueError, match="0, 1 or 2"):
        resolve_axis(vol, 3)


class _Stub:
    """predict_images answering with fixed masks per prompt (model-free label bookkeeping)."""

    def __init__(self, masks_scores):
        self.masks_scores = masks_scores
        self.batches = []

    def predict_images(self, images, prompts, boxes=None, box_labels=None, threshold=0.5, nms_iou=0.5):
        self.batches.append(len(images))
        out = []
        for image in images:
            dets = []
            for p in prompts:
                masks, scores = self.masks_scores[p]
                m = (
                    np.stack([np.broadcast_to(x, image.shape[:2]) for x in masks])
                    if masks
                    else np.zeros((0, *image.shape[:2]), bool)
                )
                dets.append(Detections(p, np.zeros((len(scores), 4), np.float32), np.asarray(scores, np.float32), m))
            out.append(dets)
        return out


def test_overlap_goes_to_the_best_score_and_cleanup_relabels():
    vol = _volume(np.eye(4))
    geo = vol.slice_geometry(2)
    h, w = geo.display_shape
    a = np.zeros((h, w), bool)
    a[:, : w // 2 + 1] = True  # left half + one column
    b = np.zeros((h, w), bool)
    b[:, w // 2 :] = True  # right half: overlaps a on one column
    low = np.zeros((h, w), bool)
    low[0, w // 2] = True  # in the overlap column
    stub = _Stub({"a": ([a, low], [0.6, 0.9]), "b": ([b], [0.8])})
    seg = segment_volume(stub, vol, ["a", "b"], slice_batch=3)
    assert stub.batches == [3, 1]
    expected = np.where(b, 2, np.where(a, 1, 0))  # a's 0.6 loses to b's 0.8 on the overlap
    expected[0, w // 2] = 1  # a's second detection (0.9 > 0.8) wins there
    for k in range(4):
        np.testing.assert_array_equal(geo.to_display(seg.labels[..., k]), expected)
    assert seg.detections == [8, 4] and seg.slices_with_detections == [4, 4] and seg.max_scores[0] == pytest.approx(0.9)
    legend = seg.legend()
    assert [e["prompt"] for e in legend] == ["a", "b"]
    # What the label map holds, value by value (the file a user receives) ...
    for value, entry in zip((1, 2), legend):
        assert entry["voxels"] == int((expected == value).sum()) * 4 == int((seg.labels == value).sum())
        assert entry["volume_ml"] == pytest.approx(entry["voxels"] * 1e-3)
    # ... and, named as such, each prompt's own mask before the overlap went to one of them.
    assert legend[0]["prompt_mask_voxels"] == int(a.sum()) * 4 == int(seg.masks[0].sum())
    assert legend[1]["prompt_mask_voxels"] == int(b.sum()) * 4
    assert legend[1]["prompt_mask_volume_ml"] == pytest.approx(b.sum() * 4e-3)
    assert legend[1]["prompt_mask_voxels"] > legend[1]["voxels"]  # the overlap is counted once, in the label map


def test_default_slice_batch_is_one_on_cpu_and_eight_on_cuda():
    import torch

    from medsam3.inference.volume import default_slice_batch

    assert default_slice_batch(torch.device("cpu")) == 1
    assert default_slice_batch(torch.device("cuda", 1)) == 8
    vol = _volume(np.eye(4))
    for device, expected in (("cpu", [1, 1, 1, 1]), ("cuda", [4])):
        stub = _Stub({"a": ([], [])})
        stub.device = torch.device(device)
        segment_volume(stub, vol, ["a"])
        assert stub.batches == expected
