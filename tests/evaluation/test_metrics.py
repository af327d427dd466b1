"""Tests for medsam3.evaluation.metrics against hand-derived values and, when installed,
independent implementations (MONAI for NSD/HD95/Dice/IoU, medpy for Dice and
border distances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medsam3.evaluation.metrics import (
    compute_all,
    dice,
    hausdorff_distance_95,
    iou,
    normalized_surface_distance,
    summarize,
)


# --------------------------------------------------------------------------- #
# Fixtures: hand-made geometry
# --------------------------------------------------------------------------- #
def _offset_squares_2d():
    """Two 10x10 squares; gt is pred shifted by 2 rows (axis 0).

    With spacing (2.0, 0.5) the border-voxel distances pred->gt are
    (derivation; gt->pred is the mirror image, same multiset):
      * pred top row (10 voxels): nearest gt border is gt's top row, 2 rows
        below -> 2 * 2.0 = 4.0 mm;
      * pred side columns, rows 12..19 (16 voxels): lie on gt's side columns -> 0;
      * pred side columns, row 11 (2 voxels): 1 row to gt's top corner -> 2.0 mm;
      * pred bottom row, interior cols 11..18 (8 voxels): nearest gt border is a
        gt side column in the same row, min(c-10, 19-c) * 0.5 mm
        -> 0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5 (gt's bottom row is 2*2.0 = 4 mm away).
    36 border voxels per mask.
    """
    pred = np.zeros((32, 32), bool)
    pred[10:20, 10:20] = True
    gt = np.zeros_like(pred)
    gt[12:22, 10:20] = True
    return pred, gt


def _offset_cubes_3d():
    """Two 6^3 cubes; gt is pred shifted by 1 voxel along axis 2.

    With spacing (1.0, 1.0, 3.0), border (face) voxels: 6^3 - 4^3 = 152 each.
    Distances pred->gt (gt->pred is the mirror image):
      * pred face z=4 (36 voxels): gt has nothing at z=4; gt face z=5 is one
        step along axis 2 -> 3.0 mm;
      * pred lateral ring at z=5..9 (5 layers x 20 = 100): on gt's lateral faces -> 0;
      * pred face z=9 interior 4x4 (16): nearest gt border is gt's lateral ring
        in-plane (gt's z=10 face is 3 mm away): outer 12 -> 1.0 mm, inner 4 -> 2.0 mm.
    """
    pred = np.zeros((16, 16, 16), bool)
    pred[4:10, 4:10, 4:10] = True
    gt = np.zeros_like(pred)
    gt[4:10, 4:10, 5:11] = True
    return pred, gt


def _random_blob(shape, seed, sigma=3.0, frac=0.25):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - frac)


def _random_pairs():
    """Overlapping-but-different random blobs, 2D and 3D, anisotropic spacing."""
    cases = []
    for seed in range(3):
        gt = _random_blob((64, 48), seed)
        pred = ndimage.binary_dilation(gt, iterations=1 + seed) ^ _random_blob((64, 48), 100 + seed, frac=0.05)
        cases.append((pred, gt, (0.7, 1.3)))
    for seed in range(2):
        gt = _random_blob((28, 32, 24), seed, sigma=2.5)
        pred = ndimage.binary_erosion(gt) | _random_blob((28, 32, 24), 200 + seed, sigma=2.0, frac=0.03)
        cases.append((pred, gt, (2.5, 0.8, 0.65)))
    return cases


# --------------------------------------------------------------------------- #
# Dice / IoU
# --------------------------------------------------------------------------- #
def test_dice_iou_overlapping_rectangles():
    a = np.zeros((10, 12), bool)
    a[0:4, 0:6] = True  # 24 px
    b = np.zeros_like(a)
    b[2:6, 3:10] = True  # 28 px; overlap rows 2..3 x cols 3..5 = 6 px
    assert dice(a, b) == pytest.approx(2 * 6 / (24 + 28))
    assert iou(a, b) == pytest.approx(6 / (24 + 28 - 6))
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0 and iou(a, ~a) == 0.0


def test_dice_iou_relation_and_symmetry_on_blobs():
    for pred, gt, _ in _random_pairs():
        d, j = dice(pred, gt), iou(pred, gt)
        assert d == pytest.approx(2 * j / (1 + j))
        assert d == pytest.approx(dice(gt, pred))


def test_accepts_01_integer_masks():
    a = np.zeros((5, 5), np.uint8)
    a[1:3, 1:3] = 1
    assert dice(a, a.astype(bool)) == 1.0


# --------------------------------------------------------------------------- #
# NSD
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "tol, expected",
    [
        (4.01, 1.0),
        (4.0, 1.0),  # tolerance equal to the shift distance is inclusive
        (3.99, 26 / 36),  # only the 10 far-side voxels per mask miss
        (2.0, 26 / 36),
        (1.99, 22 / 36),  # now also the 2 row-11 voxels and the two 2.0 mm bottom voxels
        (0.25, 16 / 36),
    ],
)
def test_nsd_offset_squares_anisotropic(tol, expected):
    pred, gt = _offset_squares_2d()
    assert normalized_surface_distance(pred, gt, tol, spacing=(2.0, 0.5)) == pytest.approx(expected)
    assert normalized_surface_distance(gt, pred, tol, spacing=(2.0, 0.5)) == pytest.approx(expected)


def test_nsd_spacing_is_per_axis_in_array_order():
    pred, gt = _offset_squares_2d()
    # Swapped spacing (0.5, 2.0): the shift is now 2 * 0.5 = 1.0 mm, gt's bottom row is
    # 1.0 mm from pred's bottom-row interior, row-11 voxels 0.5 mm: everything <= 1.0 mm.
    assert normalized_surface_distance(pred, gt, 1.0, spacing=(0.5, 2.0)) == 1.0
    # Just below: the 10 top-row and 8 bottom-interior voxels per mask miss.
    assert normalized_surface_distance(pred, gt, 0.99, spacing=(0.5, 2.0)) == pytest.approx(18 / 36)


@pytest.mark.parametrize(
    "tol, expected",
    [
        (3.01, 1.0),
        (3.0, 1.0),
        (2.99, (152 - 36) / 152),
        (1.5, (152 - 40) / 152),
        (0.5, 100 / 152),
    ],
)
def test_nsd_offset_cubes_anisotropic(tol, expected):
    pred, gt = _offset_cubes_3d()
    assert normalized_surface_distance(pred, gt, tol, spacing=(1.0, 1.0, 3.0)) == pytest.approx(expected)


def test_nsd_tolerance_at_inexact_float_multiple_of_spacing():
    # Shift of 3 rows at 0.1 mm: the distance 3 * 0.1 is 0.30000000000000004 in floats.
    pred = np.zeros((20, 20), bool)
    pred[5:12, 5:12] = True
    gt = np.roll(pred, 3, axis=0)
    sp = (0.1, 1.0)
    at = normalized_surface_distance(pred, gt, 0.3, spacing=sp)
    assert at == normalized_surface_distance(pred, gt, 0.30001, spacing=sp)
    assert at > normalized_surface_distance(pred, gt, 0.29999, spacing=sp)


def test_nsd_identical_and_disjoint():
    pred, gt = _offset_squares_2d()
    assert normalized_surface_distance(pred, pred, 0.1) == 1.0
    far = np.zeros_like(pred)
    far[0:3, 28:31] = True
    assert normalized_surface_distance(pred, far, 1.0) == 0.0


# --------------------------------------------------------------------------- #
# HD95
# --------------------------------------------------------------------------- #
def test_hd95_offset_shapes_anisotropic():
    pred, gt = _offset_squares_2d()
    # 95th percentile of 36 sorted distances falls inside the ten 4.0 mm values.
    assert hausdorff_distance_95(pred, gt, spacing=(2.0, 0.5)) == pytest.approx(2 * 2.0)
    pred3, gt3 = _offset_cubes_3d()
    assert hausdorff_distance_95(pred3, gt3, spacing=(1.0, 1.0, 3.0)) == pytest.approx(1 * 3.0)
    # Shift along the fine axis instead: 1 voxel * 1.0 mm.
    gt3b = np.roll(pred3, 1, axis=0)
    assert hausdorff_distance_95(pred3, gt3b, spacing=(1.0, 1.0, 3.0)) == pytest.approx(1.0)


def test_hd95_ignores_small_outlier():
    gt = np.zeros((40, 40), bool)
    gt[5:25, 5:25] = True  # 76 border pixels
    pred = gt.copy()
    pred[38, 38] = True  # one isolated pixel: 1 of 77 pred border pixels, far away
    assert hausdorff_distance_95(pred, gt) == 0.0
    assert hausdorff_distance_95(gt, pred) == 0.0


# --------------------------------------------------------------------------- #
# Empty masks
# --------------------------------------------------------------------------- #
def test_empty_cases():
    empty = np.zeros((8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5] = True
    for fn in (dice, iou):
        assert fn(empty, empty) == 1.0
        assert fn(empty, empty, empty_score=0.0) == 0.0
        assert math.isnan(fn(empty, empty, empty_score=float("nan")))
        assert fn(empty, full) == 0.0 and fn(full, empty) == 0.0
    assert normalized_surface_distance(empty, empty, 1.0) == 1.0
    assert math.isnan(normalized_surface_distance(empty, empty, 1.0, empty_score=float("nan")))
    assert normalized_surface_distance(empty, full, 1.0) == 0.0
    assert normalized_surface_distance(full, empty, 1.0) == 0.0
    assert hausdorff_distance_95(empty, empty) == 0.0
    assert hausdorff_distance_95(empty, full) == math.inf
    assert hausdorff_distance_95(full, empty) == math.inf


def test_compute_all_matches_individual_and_empty():
    pred, gt = _offset_cubes_3d()
    sp = (1.0, 1.0, 3.0)
    out = compute_all(pred, gt, spacing=sp, tolerance_mm=2.5)
    assert set(out) == {"dice", "iou", "nsd", "hd95"}
    assert out["dice"] == pytest.approx(dice(pred, gt))
    assert out["iou"] == pytest.approx(iou(pred, gt))
    assert out["nsd"] == pytest.approx(normalized_surface_distance(pred, gt, 2.5, spacing=sp))
    assert out["hd95"] == pytest.approx(hausdorff_distance_95(pred, gt, spacing=sp))
    empty = np.zeros_like(pred)
    assert compute_all(empty, empty) == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0}
    assert compute_all(pred, empty) == {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": math.inf}
    excluded = compute_all(empty, empty, empty_score=float("nan"))
    assert all(math.isnan(v) for v in excluded.values())


# --------------------------------------------------------------------------- #
# summarize
# --------------------------------------------------------------------------- #
def test_summarize_skips_nan_and_reports_inf():
    s = summarize([0.5, float("nan"), 1.0, 0.0])
    assert s["n"] == 3 and s["n_nan"] == 1 and s["n_inf"] == 0
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(np.std([0.5, 1.0, 0.0]))
    h = summarize([2.0, math.inf, 4.0, float("nan")])
    assert (h["n"], h["n_inf"], h["n_nan"]) == (2, 1, 1)
    assert h["mean"] == pytest.approx(3.0)
    p = summarize([2.0, math.inf, 4.0], inf_replacement=9.0)
    assert p["n"] == 3 and p["n_inf"] == 1 and p["mean"] == pytest.approx(5.0)
    assert summarize([1.0, 3.0], ddof=1)["std"] == pytest.approx(math.sqrt(2.0))
    none = summarize(iter([float("nan")]))
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def test_validation_errors():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="2D or 3D"):
        dice(np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 4), bool))
    with pytest.raises(ValueError, match="binary"):
        dice(np.full((4, 4), 0.7), a)
    with pytest.raises(ValueError, match="one spacing per"):
        hausdorff_distance_95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="one entry"):
        hausdorff_distance_95(a, a, spacing=1.0)
    with pytest.raises(ValueError, match="> 0"):
        hausdorff_distance_95(a, a, spacing=(1.0, 0.0))
    for bad in (0.0, -1.0, float("nan"), math.inf):
        with pytest.raises(ValueError, match="tolerance_mm"):
            normalized_surface_distance(a, a, bad)
    with pytest.raises(ValueError, match="tolerance_mm"):
        compute_all(a, a, tolerance_mm=0.0)
    with pytest.raises(ValueError, match="inf_replacement"):
        summarize([1.0], inf_replacement=math.inf)


# --------------------------------------------------------------------------- #
# Cross-checks against independent implementations (optional test deps)
# --------------------------------------------------------------------------- #
def test_against_medpy():
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, gt, sp in _random_pairs():
        assert dice(pred, gt) == pytest.approx(binary.dc(pred, gt), abs=1e-12)
        assert iou(pred, gt) == pytest.approx(binary.jc(pred, gt), abs=1e-12)
        # medpy's public hd95 pools both directions into one percentile; our HD95 is the
        # max of the directed percentiles (MONAI/DeepMind). Rebuild it from medpy's own
        # directed border distances to check the distance computation independently.
        directed = getattr(binary, "__surface_distances")
        d_pg = directed(pred, gt, sp, 1)
        d_gp = directed(gt, pred, sp, 1)
        expected = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
        assert hausdorff_distance_95(pred, gt, spacing=sp) == pytest.approx(expected, rel=1e-12)
        assert hausdorff_distance_95(pred, gt, spacing=sp) >= binary.hd95(pred, gt, sp) - 1e-9


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI-internal deprecation notice
def test_against_monai():
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    for pred, gt, sp in _random_pairs():
        yp = torch.from_numpy(pred[None, None].astype(np.float32))
        yt = torch.from_numpy(gt[None, None].astype(np.float32))
        assert dice(pred, gt) == pytest.approx(compute_dice(yp, yt, include_background=True).item(), rel=1e-6)
        assert iou(pred, gt) == pytest.approx(compute_iou(yp, yt, include_background=True).item(), rel=1e-6)
        hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=list(sp)).item()
        assert hausdorff_distance_95(pred, gt, spacing=sp) == pytest.approx(hd, rel=1e-5)
        for tol in (0.55, 1.45, 2.9):
            nsd = compute_surface_dice(
                yp, yt, [tol], include_background=True, spacing=list(sp), use_subvoxels=False
            ).item()
            assert normalized_surface_distance(pred, gt, tol, spacing=sp) == pytest.approx(nsd, abs=1e-6)
