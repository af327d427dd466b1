"""RTSTRUCT contours: one polygon per region, holes joined by keyhole cuts, read back by pixel centres."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsam3.outputs.rtstruct import mask_contours


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside any polygon (union, as plastimatch reads contours), by OpenCV's
    point-in-polygon test: independent of how the polygons were traced."""
    import cv2

    out = np.zeros(shape, bool)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for poly in polygons:
        contour = poly.astype(np.float32).reshape(-1, 1, 2)
        inside = [cv2.pointPolygonTest(contour, (float(c), float(r)), False) > 0 for r, c in zip(rows.ravel(), cols.ravel())]
        out |= np.array(inside).reshape(shape)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_union_of_polygons_is_the_mask_with_its_holes_and_islands(seed):
    rng = np.random.default_rng(seed)
    noise = rng.random((40, 36))
    if seed % 2:  # smooth blobs with large holes and islands in them; else pixel noise, many one-pixel holes
        noise = ndimage.gaussian_filter(noise, 1.2)
    mask = noise > np.quantile(noise, 0.4)
    mask[0] = False  # also regions touching the border of the image
    polygons = mask_contours(mask)
    assert len(polygons) == ndimage.label(mask, structure=np.ones((3, 3)))[1]  # one per 8-connected region
    holes = ndimage.binary_fill_holes(mask) & ~mask
    assert holes.sum() > 0, "the test needs holes"
    np.testing.assert_array_equal(rasterise(polygons, mask.shape), mask)


def test_ring_with_an_island_and_a_single_pixel():
    mask = np.zeros((20, 20), bool)
    mask[2:18, 2:18] = True
    mask[5:15, 5:15] = False  # a large hole
    mask[9, 9] = True  # an island in it
    mask[0, 19] = True  # a single pixel
    polygons = mask_contours(mask)
    assert len(polygons) == 3
    np.testing.assert_array_equal(rasterise(polygons, mask.shape), mask)
