"""Segmentation metrics for binary 2D/3D masks, as medical-imaging papers report them.

All functions take two binary masks of the same shape (numpy ``bool`` arrays, or
arrays holding only 0/1) and, for the distance-based metrics, a ``spacing``: the
physical size of a pixel/voxel in mm, **one entry per array axis, in array axis
order** (default 1.0 for every axis). Note that SimpleITK's ``GetSpacing()`` is
in (x, y, z) order while ``GetArrayFromImage`` gives (z, y, x) arrays, so ITK
spacing must be reversed before it is passed here.

Definitions (P = predicted foreground, G = ground-truth foreground)
-------------------------------------------------------------------
* Dice = 2|P ∩ G| / (|P| + |G|).
* IoU (Jaccard) = |P ∩ G| / |P ∪ G|.
* Surface (border) voxels: ``S(M) = M & ~binary_erosion(M)`` with the
  face-connected structuring element (4-connectivity in 2D, 6 in 3D) and
  everything outside the array counted as background, so a mask touching the
  image edge has a surface there. This is the border definition of medpy and of
  MONAI's ``get_mask_edges``.
* Surface distances: for every voxel of S(P), the Euclidean distance in mm
  (respecting ``spacing``) to the nearest voxel of S(G), and vice versa
  (``scipy.ndimage.distance_transform_edt(~S(G), sampling=spacing)``).
* NSD / surface Dice at tolerance τ (Nikolov et al. 2021):
  ``(#{p in S(P): d(p, S(G)) <= τ} + #{g in S(G): d(g, S(P)) <= τ}) / (|S(P)| + |S(G)|)``.

  Variant: this is the **border-voxel** variant, identical to MONAI's
  ``compute_surface_dice(..., use_subvoxels=False)``: every border voxel has
  weight 1. DeepMind's ``surface-distance`` library (the reference code of the
  paper, also used by MedSAM's evaluation) instead weights surface elements by
  their area, estimated from marching-cubes lookup tables on a half-voxel-shifted
  grid. We chose border voxels because it needs only ``scipy.ndimage``, is
  exactly reproducible by an independent, maintained library (MONAI), and is
  easy to reason about; the price is that with strongly anisotropic spacing a
  voxel on a face normal to the coarse axis counts as much as one on a face
  normal to a fine axis, so values can differ from DeepMind's by a few points,
  most on small or thin structures. Compare NSD numbers across papers only when
  the variant and τ match.
  Distances within a relative 1e-9 of τ count as within tolerance, so that a τ
  equal to an exact multiple of the spacing (e.g. 3 × 0.1 mm = 0.3 mm) is not
  lost to floating-point rounding.
* HD95 = max(P95{d(p, S(G)) : p in S(P)}, P95{d(g, S(P)) : g in S(G)}) in mm,
  with ``numpy.percentile``'s default linear interpolation: the symmetric
  Hausdorff distance with the maximum replaced by the 95th percentile, as in
  MONAI (``compute_hausdorff_distance(percentile=95)``) and DeepMind's
  ``compute_robust_hausdorff``. medpy's ``hd95`` (and nnU-Net v1, which calls
  it) instead takes one percentile of the two directed sets pooled, which is
  usually a little smaller; numbers from the two definitions are not
  interchangeable.

Empty masks
-----------
* Both empty: Dice, IoU and NSD return ``empty_score`` (default 1.0, "correctly
  predicted absence", as common benchmarks do). Pass ``float('nan')`` to mean
  "exclude this case"; ``summarize`` skips NaNs. HD95 returns 0.0 (the surfaces
  agree trivially); ``compute_all`` returns NaN for HD95 too when
  ``empty_score`` is NaN, so the case is excluded from every metric.
* Exactly one empty: Dice, IoU and NSD are 0.0; HD95 is ``inf`` (there is no
  surface to measure a distance to). ``summarize`` reports infs separately and,
  unless given a finite penalty, leaves them out of the mean (see there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = [
    "dice",
    "iou",
    "normalized_surface_distance",
    "hausdorff_distance_95",
    "compute_all",
    "summarize",
    "DEFAULT_TOLERANCE_MM",
]

#: Default NSD tolerance for :func:`compute_all`. A placeholder, not a
#: recommendation: Nikolov et al. choose τ per structure from inter-rater
#: variability, so set it explicitly and report it alongside NSD.
DEFAULT_TOLERANCE_MM: float = 2.0

# Relative slack on the NSD tolerance so that distances equal to τ up to
# floating-point rounding count as within tolerance.
_TOLERANCE_RTOL = 1e-9


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _as_mask(a: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a binary mask (bool or 0/1 numbers), got dtype {arr.dtype}.")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name} must be a binary mask containing only 0/1 (or bool); threshold "
            f"probabilities/logits first, e.g. `{name} > 0.5`."
        )
    return arr.astype(bool)


def _check_pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got {p.shape} and {g.shape}; "
            "resample the prediction to the ground-truth grid first."
        )
    if p.ndim not in (2, 3):
        raise ValueError(
            f"masks must be 2D or 3D, got shape {p.shape}; pass one image/volume at a time "
            "(squeeze batch and channel axes)."
        )
    return p, g


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.ndim(spacing) != 1:
        raise ValueError(
            f"spacing must be a sequence with one entry (mm) per array axis, got {spacing!r}; "
            f"e.g. {(1.0,) * ndim} for a {ndim}D mask."
        )
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(
            f"spacing has {len(sp)} entries but the masks are {ndim}D; give one spacing per "
            "array axis in array order (reverse SimpleITK's (x, y, z) GetSpacing() for (z, y, x) arrays)."
        )
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing entries must be finite and > 0 (mm), got {sp}.")
    return sp


def _check_tolerance(tolerance_mm: float) -> float:
    try:
        tol = float(tolerance_mm)
    except (TypeError, ValueError):
        raise ValueError(f"tolerance_mm must be a number in mm, got {tolerance_mm!r}.") from None
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tolerance_mm must be a finite number > 0 (mm), got {tolerance_mm!r}.")
    return tol


# --------------------------------------------------------------------------- #
# Core computations
# --------------------------------------------------------------------------- #
def _union_bbox(p: np.ndarray, g: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of P ∪ G (non-empty). Cropping to it is exact: outside it
    everything is background, which is what erosion assumes beyond the array."""
    union = p | g
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(slices)


def _border(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Directed border-voxel distances (mm): S(P) -> S(G) and S(G) -> S(P).
    Both masks must be non-empty."""
    box = _union_bbox(p, g)
    bp, bg = _border(p[box]), _border(g[box])
    d_pg = ndimage.distance_transform_edt(~bg, sampling=spacing)[bp]
    d_gp = ndimage.distance_transform_edt(~bp, sampling=spacing)[bg]
    return d_pg, d_gp


def _nsd_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, tol: float) -> float:
    limit = tol * (1.0 + _TOLERANCE_RTOL)
    ok = np.count_nonzero(d_pg <= limit) + np.count_nonzero(d_gp <= limit)
    return float(ok / (d_pg.size + d_gp.size))


def _hd95_from_distances(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def dice(pred: ArrayLike, gt: ArrayLike, empty_score: float = 1.0) -> float:
    """Dice = 2|P∩G|/(|P|+|G|): the standard volumetric overlap score.

    Both empty -> ``empty_score`` (NaN means "exclude"); one empty -> 0.0.
    """
    p, g = _check_pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    if total == 0:
        return float(empty_score)
    return float(2.0 * np.count_nonzero(p & g) / total)


def iou(pred: ArrayLike, gt: ArrayLike, empty_score: float = 1.0) -> float:
    """IoU (Jaccard) = |P∩G|/|P∪G|, the overlap score most vision papers quote.

    Both empty -> ``empty_score`` (NaN means "exclude"); one empty -> 0.0.
    """
    p, g = _check_pair(pred, gt)
    union = np.count_nonzero(p | g)
    if union == 0:
        return float(empty_score)
    return float(np.count_nonzero(p & g) / union)


def normalized_surface_distance(
    pred: ArrayLike,
    gt: ArrayLike,
    tolerance_mm: float,
    spacing: Sequence[float] | None = None,
    empty_score: float = 1.0,
) -> float:
    """NSD / surface Dice: fraction of border voxels of both masks lying within
    ``tolerance_mm`` of the other mask's border (border-voxel variant, see the
    module docstring). Rewards boundaries that are "clinically good enough"
    where Dice over-weights large structures.

    Both empty -> ``empty_score``; one empty -> 0.0.
    """
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    tol = _check_tolerance(tolerance_mm)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return float(empty_score)
    if not (p_any and g_any):
        return 0.0
    return _nsd_from_distances(*_surface_distances(p, g, sp), tol)


def hausdorff_distance_95(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: Sequence[float] | None = None,
) -> float:
    """HD95 in mm: max of the two directed 95th-percentile border distances,
    a Hausdorff distance that ignores the worst 5% (outlier voxels).

    Both empty -> 0.0; exactly one empty -> ``inf``.
    """
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if not (p_any and g_any):
        return math.inf
    return _hd95_from_distances(*_surface_distances(p, g, sp))


def compute_all(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    empty_score: float = 1.0,
) -> dict[str, float]:
    """Dice, IoU, NSD and HD95 in one call, computing surface distances once.

    Returns ``{"dice", "iou", "nsd", "hd95"}``. Empty handling as in the
    individual functions, except that with ``empty_score=nan`` a both-empty case
    also gets ``hd95=nan`` so it is excluded from every metric.
    """
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    tol = _check_tolerance(tolerance_mm)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        e = float(empty_score)
        return {"dice": e, "iou": e, "nsd": e, "hd95": math.nan if math.isnan(e) else 0.0}
    if not (p_any and g_any):
        return {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": math.inf}
    inter = np.count_nonzero(p & g)
    n_p, n_g = np.count_nonzero(p), np.count_nonzero(g)
    d_pg, d_gp = _surface_distances(p, g, sp)
    return {
        "dice": float(2.0 * inter / (n_p + n_g)),
        "iou": float(inter / (n_p + n_g - inter)),
        "nsd": _nsd_from_distances(d_pg, d_gp, tol),
        "hd95": _hd95_from_distances(d_pg, d_gp),
    }


def summarize(
    values: Iterable[float],
    *,
    inf_replacement: float | None = None,
    ddof: int = 0,
) -> dict[str, float | int]:
    """Mean, standard deviation and median over cases, for "mean ± std (n)" reporting.

    * NaN means "excluded" (see ``empty_score``) and is skipped.
    * ±inf (e.g. HD95 with one empty mask) cannot enter a mean meaningfully:
      by default it is skipped too, but counted in ``n_inf`` so that the
      omission is visible and can be reported. Pass a finite
      ``inf_replacement`` (e.g. the image diagonal in mm, a common challenge
      penalty) to include those cases with that value instead.
    * ``n`` counts only the values used; ``std`` uses ``ddof`` (0 = numpy's
      population std). With nothing to average, mean and std are NaN.

    Returns ``{"mean", "std", "median", "n", "n_nan", "n_inf"}``.
    """
    arr = np.asarray([float(v) for v in values], dtype=float)
    nan_mask = np.isnan(arr)
    inf_mask = np.isinf(arr)
    n_nan, n_inf = int(nan_mask.sum()), int(inf_mask.sum())
    if inf_replacement is not None:
        rep = float(inf_replacement)
        if not math.isfinite(rep):
            raise ValueError(f"inf_replacement must be finite, got {inf_replacement!r}.")
        arr = np.where(inf_mask, rep, arr)
        used = arr[~nan_mask]
    else:
        used = arr[~nan_mask & ~inf_mask]
    n = int(used.size)
    mean = float(used.mean()) if n > 0 else math.nan
    std = float(used.std(ddof=ddof)) if n - ddof > 0 else math.nan
    median = float(np.median(used)) if n > 0 else math.nan
    return {"mean": mean, "std": std, "median": median, "n": n, "n_nan": n_nan, "n_inf": n_inf}
