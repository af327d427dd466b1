"""Text-prompted segmentation of a 3D volume, slice by slice, back onto the original voxels.

Slices are cut along one voxel axis (default: the last one, axial for typical CT/MR and every
axial DICOM series), shown to the model in radiological display orientation
(:class:`medsam3.io.SliceGeometry`), ``slice_batch`` of them per vision pass, all prompts per
slice in the same pass over the cached features. Every 2D mask goes back through the exact
inverse of the display transform, so the label volume has the input's shape and voxel order and
is saved with the input's affine.

Label map: one value per prompt (1 = first prompt, ...). Where the masks of several prompts
overlap on a slice, the voxel goes to the prompt whose detection covering it scores highest.
Optional 3D clean-up (largest connected component, hole filling) is applied to each prompt's
binary volume; a voxel then keeps its winning label if that prompt still covers it, else the
first prompt (in prompt order) that does.

Two volumes per prompt, never confused: what the label map holds for its value (what a user
receives in ``labels.nii.gz``) and the prompt's own mask before overlaps are resolved (what
``--binary-masks`` writes). :meth:`VolumeSegmentation.legend` reports both, named as such.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError
from ..io.volume import SliceGeometry, Volume, label_dtype
from .postprocess import Detections
from .postprocess3d import (
    LargestComponent,
    RecordedConcepts,
    clean_mask,
    largest_component_flags,
    voxel_volume_ml,
)

__all__ = ["AXIS_NAMES", "VolumeSegmentation", "resolve_axis", "segment_volume"]

logger = logging.getLogger(__name__)

# World axis (RAS: 0 = L/R, 1 = P/A, 2 = I/S) that each plane's slice normal follows.
AXIS_NAMES = {"axial": 2, "coronal": 1, "sagittal": 0}


def resolve_axis(volume: Volume, axis: int | str | None) -> int:
    """Voxel axis (0..2) to slice along.

    ``None``/``"auto"``: the last voxel axis (the volume's own slice axis). An int: that voxel
    axis. ``"axial"``/``"coronal"``/``"sagittal"``: the voxel axis whose direction in the affine
    is closest to the plane's normal (S/I, A/P, L/R).
    """
    if axis is None or (isinstance(axis, str) and axis.strip().lower() in ("", "auto")):
        return 2
    if isinstance(axis, str) and axis.strip().lstrip("-").isdigit():
        axis = int(axis)
    if isinstance(axis, (int, np.integer)):
        if not -3 <= int(axis) < 3:
            raise UserError(f"slice axis must be 0, 1 or 2 (or axial/coronal/sagittal), got {axis}")
        return int(axis) % 3
    name = str(axis).strip().lower()
    if name not in AXIS_NAMES:
        raise UserError(f"unknown slice axis {axis!r}; use auto, axial, coronal, sagittal, 0, 1 or 2")
    dirs = np.abs(np.asarray(volume.affine, dtype=np.float64)[:3, :3])
    dirs = dirs / np.maximum(np.linalg.norm(dirs, axis=0, keepdims=True), 1e-12)
    return int(np.argmax(dirs[AXIS_NAMES[name]]))


@dataclass
class VolumeSegmentation:
    """What :func:`segment_volume` returns.

    Attributes:
        labels: label volume with the input's shape (uint8/uint16), 0 = background,
            ``i + 1`` = ``prompts[i]``.
        masks: one boolean volume per prompt, its own mask before overlaps are resolved (after the
            optional 3D clean-up; masks of different prompts may overlap).
        prompts: the prompts, in label order.
        axis: voxel axis the slices were cut along; ``geometry`` says how they were displayed.
        detections: per prompt, detections summed over slices.
        slices_with_detections: per prompt, number of slices with at least one detection.
        max_scores: per prompt, best detection score over all slices (0 when none).
        voxel_ml: volume of one voxel in ml.
        seconds: wall-clock time of the model passes and post-processing.
    """

    labels: np.ndarray
    masks: list[np.ndarray]
    prompts: list[str]
    axis: int
    geometry: SliceGeometry
    detections: list[int]
    slices_with_detections: list[int]
    max_scores: list[float]
    voxel_ml: float
    seconds: float
    settings: dict = field(default_factory=dict)
    unknown_prompts: list[str] = field(default_factory=list)
    """Prompts outside the model's recorded concepts, run with ``--allow-unknown``; marked in the legend."""

    def label_voxels(self) -> list[int]:
        """Per prompt, the voxels of its value in the label map (overlaps resolved)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.prompts) + 1)
        return [int(c) for c in counts[1 : len(self.prompts) + 1]]

    def mask_voxels(self, index: int) -> int:
        """Voxels of the prompt's own mask, before overlaps with other prompts are resolved."""
        return int(np.count_nonzero(self.masks[index]))

    def voxels_lost_to(self, index: int) -> dict[str, int]:
        """Voxels of the prompt's own mask that the label map gives to another prompt (higher score there)."""
        values, counts = np.unique(self.labels[self.masks[index]], return_counts=True)
        return {
            self.prompts[int(v) - 1]: int(c) for v, c in zip(values, counts) if v != 0 and int(v) != index + 1 and c
        }

    def legend(self) -> list[dict]:
        """One entry per label value: what the label map holds for it (``voxels``, ``volume_ml``),
        the prompt's own mask before overlaps (``prompt_mask_voxels``, ``prompt_mask_volume_ml``),
        detections, whether the prompt is an unknown concept, and the voxels of its own mask that the
        label map gives to other prompts (``voxels_lost_to``: where masks overlap, the higher score wins)."""
        in_labels = self.label_voxels()
        return [
            {
                "value": i + 1,
                "prompt": p,
                "voxels": in_labels[i],
                "volume_ml": round(in_labels[i] * self.voxel_ml, 6),
                "prompt_mask_voxels": self.mask_voxels(i),
                "prompt_mask_volume_ml": round(self.mask_voxels(i) * self.voxel_ml, 6),
                "detections": self.detections[i],
                "slices_with_detections": self.slices_with_detections[i],
                "max_score": round(self.max_scores[i], 6),
                "unknown_concept": p in self.unknown_prompts,
                "voxels_lost_to": self.voxels_lost_to(i),
            }
            for i, p in enumerate(self.prompts)
        ]


def _score_map(det: Detections, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, the best score among the detections covering it (0 where none)."""
    out = np.zeros(shape, dtype=np.float32)
    for mask, score in zip(det.masks, det.scores):
        np.maximum(out, np.where(mask, np.float32(score), np.float32(0)), out=out)
    return out


def default_slice_batch(device) -> int:
    """Slices per vision pass when the user gives none: 8 on a GPU, 1 on a CPU.

    On a CPU the encoder's cost grows linearly with the batch, so batching slices gains nothing
    (``scripts/bench_volume.py``: 0.91x at 8 slices per pass, 64 slices, 336 px, 2 cores) and costs
    memory; on a GPU it fills the device.
    """
    return 8 if getattr(device, "type", str(device)) == "cuda" else 1


def segment_volume(
    predictor,
    volume: Volume,
    prompts: str | Sequence[str],
    *,
    axis: int | str | None = None,
    reorient: bool = True,
    slice_batch: int | None = None,
    threshold: float | None = 0.5,
    nms_iou: float | None = 0.5,
    boxes=None,
    box_labels=None,
    largest_component: LargestComponent = False,
    fill_holes: bool = False,
    progress: bool = False,
    description: str | None = None,
) -> VolumeSegmentation:
    """Segment every slice of ``volume`` for every prompt; see the module docstring.

    Args:
        predictor: a :class:`medsam3.inference.predictor.Predictor` (anything with ``predict_images``).
        axis: see :func:`resolve_axis`.
        reorient: show slices in display orientation (recommended; the model was trained on it).
        slice_batch: slices per vision pass (None: :func:`default_slice_batch` for the predictor's device).
        boxes, box_labels: exemplar boxes in *display* pixels of every slice (as in ``predict``).
        largest_component, fill_holes: 3D clean-up of each prompt's binary volume (largest component:
            True for every prompt, or the concept names it applies to).
        progress: show a tqdm bar (slices).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise UserError("no prompt given; pass at least one text prompt such as 'liver'")
    keep_largest = largest_component_flags(largest_component, prompts)  # checked before any slice is run
    if slice_batch is None:
        slice_batch = default_slice_batch(getattr(predictor, "device", "cpu"))
    if slice_batch < 1:
        raise ValueError(f"slice batch size must be >= 1, got {slice_batch}")
    ax = resolve_axis(volume, axis)
    geo = volume.slice_geometry(ax, reorient)
    n_slices = volume.num_slices(ax)
    n_prompts = len(prompts)
    masks = [np.zeros(volume.shape, dtype=bool) for _ in prompts]
    owner = np.zeros(volume.shape, dtype=label_dtype(n_prompts))
    detections = [0] * n_prompts
    with_dets = [0] * n_prompts
    best = [0.0] * n_prompts
    index: list = [slice(None)] * 3
    logger.info(
        "%s: %d %s slices along voxel axis %d (%s), %d prompt(s), %d slice(s) per pass",
        description or volume.path or "volume",
        n_slices,
        geo.plane,
        ax,
        "display orientation" if reorient else "voxel orientation",
        n_prompts,
        slice_batch,
    )
    t0 = time.perf_counter()
    with tqdm(
        total=n_slices,
        unit="slice",
        desc=description or "slices",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, n_slices, slice_batch):
            ks = list(range(start, min(start + slice_batch, n_slices)))
            images = [volume.slice_rgb(k, ax, reorient) for k in ks]
            per_slice = predictor.predict_images(
                images, prompts, boxes=boxes, box_labels=box_labels, threshold=threshold, nms_iou=nms_iou
            )
            for k, dets in zip(ks, per_slice):
                index[ax] = k
                where = tuple(index)
                scores = np.zeros((n_prompts, *geo.display_shape), dtype=np.float32)
                for j, det in enumerate(dets):
                    if not len(det):
                        continue
                    detections[j] += len(det)
                    with_dets[j] += 1
                    best[j] = max(best[j], float(det.scores.max()))
                    masks[j][where] = geo.from_display(det.semantic_mask())
                    scores[j] = _score_map(det, geo.display_shape)
                win = np.where(scores.max(axis=0) > 0, scores.argmax(axis=0) + 1, 0)
                owner[where] = geo.from_display(win.astype(owner.dtype))
            bar.update(len(ks))
    if any(keep_largest) or fill_holes:
        if any(keep_largest):
            logger.info(
                "3D clean-up: the largest connected component of %s (%s)",
                ", ".join(repr(p) for p, keep in zip(prompts, keep_largest) if keep),
                "recorded in the weights; --no-largest-component keeps every component"
                if isinstance(largest_component, RecordedConcepts)
                else "--largest-component",
            )
        masks = [clean_mask(m, keep, fill_holes) for m, keep in zip(masks, keep_largest)]
        labels = np.zeros_like(owner)
        for j, m in enumerate(masks):  # keep the winner where it survived the clean-up
            labels[(owner == j + 1) & m] = j + 1
        for j, m in enumerate(masks):  # voxels added by hole filling / whose winner was removed
            labels[(labels == 0) & m] = j + 1
    else:
        labels = owner
    seconds = time.perf_counter() - t0
    logger.info(
        "%s: %d slices in %.1f s (%.2f slices/s)",
        description or volume.path or "volume",
        n_slices,
        seconds,
        n_slices / max(seconds, 1e-9),
    )
    return VolumeSegmentation(
        labels=labels,
        masks=masks,
        prompts=prompts,
        axis=ax,
        geometry=geo,
        detections=detections,
        slices_with_detections=with_dets,
        max_scores=best,
        voxel_ml=voxel_ml(volume),
        seconds=seconds,
        settings={
            "threshold": threshold if threshold is not None else predictor.threshold_for(""),  # the plan's, else 0.5
            **({"concept_thresholds": {p: predictor.threshold_for(p) for p in prompts}} if threshold is None else {}),
            "nms_iou": nms_iou,
            "slice_batch": slice_batch,
            "reorient": reorient,
            "largest_component": largest_component
            if isinstance(largest_component, bool)
            else [p for p, keep in zip(prompts, keep_largest) if keep],
            "fill_holes": fill_holes,
        },
        unknown_prompts=predictor.plan.unknown_prompts(prompts) if getattr(predictor, "plan", None) else [],
    )


def voxel_ml(volume: Volume) -> float:
    return voxel_volume_ml(volume.spacing)
