"""How cases are prompted and scored: text or text + largest-component box, threshold sweeps, COCO AP."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ..errors import UserError
from ..inference.distributed import DistInfo, gather_to_main, path_bytes, shard_by_size
from ..inference.postprocess import Detections
from ..inference.postprocess3d import RecordedConcepts, clean_mask, keep_largest_component, largest_component_flags
from ..inference.volume import default_slice_batch, resolve_axis
from ..io import ImageReadError, load_image2d, load_volume, save_label_map
from ..outputs import encode_rle, prompt_slug
from .cases import CaseError, CocoSet, EvalOptions, EvaluationError, ImageCase, VolumeCase, VolumeSet, read_label_map
from .metrics import compute_all

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- #
# Prompting and masks
# --------------------------------------------------------------------------------------------- #
def largest_component_box(mask: np.ndarray) -> np.ndarray | None:
    """xyxy pixel box (exclusive right/bottom) of the largest connected component, None if empty.

    Why the largest component: one box per prompt is what the text+box protocol hands the model, and
    the largest component is the deterministic, unambiguous choice for multi-part structures.
    """
    component = keep_largest_component(mask, connectivity=1)  # face connectivity, ties -> first
    if not component.any():
        return None
    rows, cols = ndimage.find_objects(component.astype(np.uint8))[0]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float32)


def _box_row(box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if box is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return np.asarray(box, np.float32).reshape(1, 4), np.ones(1, np.int64)


def _predict_rows(
    predictor,
    images: Sequence[np.ndarray],
    rows: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]],
    threshold: float,
    nms_iou: float | None,
) -> list[Detections]:
    """Detections for (image index, prompt, boxes) rows with one vision pass over ``images``.

    Why not ``Predictor.predict_images``: it takes the same boxes for every row, and ``text`` /
    ``text+box`` rows should share the vision pass (90% of the cost).
    """
    vision, sizes = predictor.encode_images(images)
    return predictor.predict_rows(vision, sizes, rows, threshold, nms_iou)


def semantic_masks(det: Detections, thresholds: Sequence[float]) -> dict[float, np.ndarray]:
    """Per threshold, the union of the detections scoring above it (the mask Dice is computed on)."""
    return {t: det.masks[det.scores > t].any(axis=0) for t in thresholds}


# --------------------------------------------------------------------------------------------- #
# The evaluation loop
# --------------------------------------------------------------------------------------------- #
@dataclass
class EvaluationReport:
    """Everything a run produced; :func:`write_report` turns it into files."""

    options: EvalOptions
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    n_cases: int = 0
    detections: list[dict[str, Any]] = field(default_factory=list)  # 2D, with ``keep_detections``
    coco_map: dict[str, Any] | None = None
    is_main: bool = True  # False on torchrun ranks other than 0: their rows went to rank 0


def _slug_unique(name: str, used: set[str]) -> str:
    slug, k = prompt_slug(name), 1
    candidate = slug
    while candidate in used:
        k += 1
        candidate = f"{slug}_{k}"
    used.add(candidate)
    return candidate


def _thr_dir(t: float) -> str:
    return f"t{t:g}"


class Evaluator:
    """Runs cases through a :class:`~medsam3.inference.predictor.Predictor`, scores them and saves predictions.

    >>> report = Evaluator(predictor, EvalOptions(protocols=("text", "text+box")), "eval/").run(coco=coco_set)
    >>> write_report(report, "eval/")

    ``output_dir=None`` writes no prediction files (trainer validation, benchmarks): the rows are the
    same. ``keep_detections`` also returns every 2D row's detections (scores, xyxy boxes).
    """

    def __init__(
        self, predictor, options: EvalOptions, output_dir: str | Path | None, *, keep_detections: bool = False
    ) -> None:
        self.predictor = predictor
        self.options = options
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.keep_detections = keep_detections
        self._case_slugs: set[str] = set()
        self._slug_of: dict[int, str] = {}  # id(case) -> folder name, fixed over all cases before sharding
        self._warned_spacing = False

    # -- shared bookkeeping ------------------------------------------------------------------
    def _case_slug(self, case: ImageCase | VolumeCase) -> str:
        """The case's prediction folder: assigned over all cases in order, so every rank agrees."""
        if id(case) not in self._slug_of:
            self._slug_of[id(case)] = _slug_unique(case.case_id, self._case_slugs)
        return self._slug_of[id(case)]

    def _row(
        self,
        case_id: str,
        modality: str,
        concept: str,
        protocol: str,
        t: float,
        pred: np.ndarray,
        gt: np.ndarray,
        spacing: Sequence[float],
        prediction: Path | None,
        **extra: Any,
    ) -> dict[str, Any]:
        metrics = compute_all(pred, gt, spacing=spacing, tolerance_mm=self.options.nsd_tolerance)
        unit = float(np.prod(spacing))
        gt_n, pred_n = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
        return {
            "case_id": case_id,
            "modality": modality,
            "concept": concept,
            "protocol": protocol,
            "threshold": t,
            "present": bool(gt_n),
            **metrics,
            "gt_size_px": gt_n,
            "pred_size_px": pred_n,
            "gt_size_mm": gt_n * unit,
            "pred_size_mm": pred_n * unit,
            "spacing_mm": " ".join(f"{s:g}" for s in spacing),
            "prediction": prediction.relative_to(self.output_dir).as_posix() if prediction else "",
            **extra,
        }

    def _prediction_path(self, protocol: str, t: float, case_slug: str, concept_slug: str, suffix: str) -> Path | None:
        """Where a prediction is saved (its folder created), or None when no files are written."""
        if self.output_dir is None:
            return None
        path = self.output_dir / "predictions" / protocol / _thr_dir(t) / case_slug / f"{concept_slug}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- 2D ------------------------------------------------------------------------------------
    def evaluate_image(self, case: ImageCase, dataset: CocoSet) -> tuple[list[dict], dict[str, list[dict]], list]:
        """Rows for one COCO image (every protocol x category x threshold), its COCO results and detections."""
        opts = self.options
        if case.problem:
            raise CaseError(case.problem)
        image = load_image2d(case.image_path, opts.window)
        height, width = image.rgb.shape[:2]
        frame = dataset.frame(case)
        if frame != (height, width):
            raise CaseError(
                f"{case.image_path} is {width}x{height} pixels but the annotation says {frame[1]}x{frame[0]}"
            )
        if image.spacing is None and not self._warned_spacing:
            logger.info("2D images without pixel spacing (PNG/JPEG/TIFF) are scored at 1 mm per pixel")
            self._warned_spacing = True
        spacing = tuple(image.spacing) if image.spacing else (1.0, 1.0)
        modality = case.modality or image.meta.get("modality") or "2D"
        gts = dataset.ground_truths(case)

        plan = [(protocol, c) for protocol in opts.protocols for c in case.categories]
        rows_in = [
            (0, dataset.prompts[c], _box_row(largest_component_box(gts[c]) if protocol == "text+box" else None))
            for protocol, c in plan
        ]
        dets = _predict_rows(self.predictor, [image.rgb], rows_in, opts.keep_threshold, opts.nms_iou)

        case_slug = self._case_slug(case)
        concept_slugs: dict[int, str] = {}
        used: set[str] = set()
        for c in case.categories:
            concept_slugs[c] = _slug_unique(dataset.prompts[c], used)
        rows, coco_results, kept = [], defaultdict(list), []
        for (protocol, c), det in zip(plan, dets):
            if self.keep_detections:
                kept.append(
                    {
                        "image": str(case.image_path),
                        "prompt": dataset.prompts[c],
                        "protocol": protocol,
                        "scores": det.scores.tolist(),
                        "boxes_xyxy": det.boxes.tolist(),
                    }
                )
            for t, pred in semantic_masks(det, opts.thresholds).items():
                if not self.reports(dataset.prompts[c], t):
                    continue
                path = self._prediction_path(protocol, t, case_slug, concept_slugs[c], ".png")
                if path is not None:
                    Image.fromarray(pred.astype(np.uint8) * 255).save(path)
                rows.append(
                    self._row(
                        case.case_id,
                        modality,
                        dataset.prompts[c],
                        protocol,
                        t,
                        pred,
                        gts[c],
                        spacing,
                        path,
                        image=str(case.image_path),
                        label="",
                        category_id=c,
                    )
                )
            if opts.coco_map:
                coco_results[protocol] += [
                    {"image_id": case.image_id, "category_id": c, "segmentation": encode_rle(m), "score": float(s)}
                    for m, s in zip(det.masks, det.scores)
                ]
        return rows, coco_results, kept

    # -- 3D ------------------------------------------------------------------------------------
    def evaluate_volume(self, case: VolumeCase, label_prompts: Mapping[int, str]) -> list[dict]:
        """Rows for one volume: slice-wise batched inference, 3D metrics with the volume's spacing."""
        opts = self.options
        if case.problem:
            raise CaseError(case.problem)
        volume = load_volume(case.image_path, opts.window)
        labels = read_label_map(case.label_path, volume)
        present = {v: bool(np.any(labels == v)) for v in label_prompts}
        concepts = [v for v in label_prompts if present[v] or opts.include_absent]
        if not concepts:
            logger.warning(
                "%s: none of the labels %s occurs in %s; nothing to evaluate",
                case.case_id,
                sorted(label_prompts),
                case.label_path,
            )
            return []
        keep_largest = dict(
            zip(label_prompts, largest_component_flags(opts.largest_component, list(label_prompts.values())))
        )
        preds = self.volume_masks(
            volume,
            {v: label_prompts[v] for v in concepts},
            {v: labels == v for v in concepts},
            largest={label_prompts[v] for v in concepts if keep_largest[v]},
            description=case.case_id,
        )
        case_slug = self._case_slug(case)
        used: set[str] = set()
        concept_slugs = {v: _slug_unique(label_prompts[v], used) for v in concepts}
        modality = case.modality or volume.modality or "3D"
        rows = []
        for (protocol, v, t), pred in preds.items():
            path = self._prediction_path(protocol, t, case_slug, concept_slugs[v], ".nii.gz")
            if path is not None:
                save_label_map(pred.astype(np.uint8), volume, path, dtype=np.uint8)
            rows.append(
                self._row(
                    case.case_id,
                    modality,
                    label_prompts[v],
                    protocol,
                    t,
                    pred,
                    labels == v,
                    volume.spacing,
                    path,
                    image=str(case.image_path),
                    label=v,
                    category_id="",
                )
            )
        return rows

    def volume_masks(
        self,
        volume,
        prompts: Mapping[Any, str],
        truths: Mapping[Any, np.ndarray],
        largest: set[str] = frozenset(),
        description: str = "",
    ) -> dict[tuple[str, Any, float], np.ndarray]:
        """{(protocol, key, threshold): predicted 3D mask of ``prompts[key]``} from one model pass.

        Slice-wise batched inference at the lowest threshold, as ``infer_sam.py`` slices a volume (the
        prompt's own mask); every reported threshold derived from it (:func:`semantic_masks`), then the
        clean-up infer_sam.py applies (``largest``: prompts that keep their largest component).
        ``truths[key]`` (3D, bool) gives text+box its box per slice.
        """
        opts = self.options
        axis = resolve_axis(volume, opts.axis)  # auto / a plane / a voxel axis, as in infer_sam.py
        geo = volume.slice_geometry(axis)
        n_slices = volume.num_slices(axis)
        preds = {
            (protocol, key, t): np.zeros(volume.shape, dtype=bool)
            for protocol in opts.protocols
            for key in prompts
            for t in opts.thresholds
            if self.reports(prompts[key], t)
        }
        index: list[Any] = [slice(None)] * 3
        per_pass = opts.slice_batch or default_slice_batch(self.predictor.device)
        starts = range(0, n_slices, per_pass)
        for start in tqdm(starts, desc=f"{description} slices", unit="batch", leave=False, disable=None):
            ks = list(range(start, min(n_slices, start + per_pass)))
            images = [volume.slice_rgb(k, axis) for k in ks]
            plan, rows_in = [], []
            for i, k in enumerate(ks):
                for protocol in opts.protocols:
                    for key, prompt in prompts.items():
                        box = None
                        if protocol == "text+box":
                            box = largest_component_box(geo.to_display(np.take(truths[key], k, axis=geo.axis)))
                        plan.append((i, protocol, key))
                        rows_in.append((i, prompt, _box_row(box)))
            dets = _predict_rows(self.predictor, images, rows_in, opts.keep_threshold, opts.nms_iou)
            for (i, protocol, key), det in zip(plan, dets):
                index[geo.axis] = ks[i]
                for t, mask in semantic_masks(det, opts.thresholds).items():
                    if (protocol, key, t) in preds:
                        preds[(protocol, key, t)][tuple(index)] = geo.from_display(mask)
        if opts.fill_holes or largest:  # the clean-up infer_sam.py applies, on every threshold
            preds = {k: clean_mask(m, prompts[k[1]] in largest, opts.fill_holes) for k, m in preds.items()}
        return preds

    # -- driver --------------------------------------------------------------------------------
    def run(
        self, coco: CocoSet | None = None, volumes: VolumeSet | None = None, dist_info: DistInfo | None = None
    ) -> EvaluationReport:
        """Evaluate every case; a failing case is logged and listed, never fatal.

        Under torchrun (``dist_info.world_size > 1``) each rank evaluates a share of the cases
        balanced by file size and writes their predictions; rank 0 gathers the rows and returns
        the whole report, in the order a one-process run gives (so the summary is identical).
        The other ranks return a report with ``is_main=False`` and no rows: they write nothing.
        """
        dist_info = dist_info or DistInfo()
        report = EvaluationReport(options=self.options)
        jobs: list[tuple[str, Any]] = [("2d", c) for c in (coco.cases if coco else [])]
        jobs += [("3d", c) for c in (volumes.cases if volumes else [])]
        if not jobs:
            raise EvaluationError("no cases to evaluate: give a COCO set and/or volumes")
        report.n_cases = len(jobs)
        self._check_cleanup(list(volumes.label_prompts.values()) if volumes else None)
        for _, case in jobs:
            self._case_slug(case)
        if dist_info.enabled:
            sizes = [path_bytes(c.image_path, getattr(c, "label_path", None)) for _, c in jobs]
            mine = shard_by_size(sizes, dist_info.world_size)[dist_info.rank]
            logger.info("rank %d of %d: %d of %d case(s)", dist_info.rank, dist_info.world_size, len(mine), len(jobs))
        else:
            mine = list(range(len(jobs)))
        outcomes: list[_CaseOutcome] = []
        bar = tqdm(mine, desc="evaluating", unit="case", disable=None if dist_info.is_main else True)
        for index in bar:
            kind, case = jobs[index]
            outcome = _CaseOutcome(index)
            try:
                if kind == "2d":
                    outcome.rows, outcome.coco_results, outcome.detections = self.evaluate_image(case, coco)
                    outcome.image_id = case.image_id
                else:
                    outcome.rows = self.evaluate_volume(case, volumes.label_prompts)
            except (CaseError, ImageReadError, OSError, ValueError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                logger.error("case %s failed: %s", case.case_id, reason)
                logger.debug("case %s traceback", case.case_id, exc_info=True)
                outcome.rows = []
                outcome.failure = {"case": str(case.case_id), "path": str(case.image_path), "reason": reason}
            outcomes.append(outcome)
        gathered = gather_to_main(outcomes)
        if gathered is None:
            report.is_main = False
            return report
        evaluated_images: list[int] = []
        coco_results: dict[str, list[dict]] = {p: [] for p in self.options.protocols}
        for outcome in sorted((o for part in gathered for o in part), key=lambda o: o.index):
            if outcome.failure is not None:
                report.failures.append(outcome.failure)
                continue
            report.rows += outcome.rows
            report.detections += outcome.detections
            if outcome.image_id is not None:
                evaluated_images.append(outcome.image_id)
                for protocol, dets in outcome.coco_results.items():
                    coco_results[protocol] += dets
        if self.options.coco_map and coco is not None:
            report.coco_map = {
                p: coco_instance_metrics(coco, coco_results[p], evaluated_images) for p in self.options.protocols
            }
        return report

    def reports(self, concept: str, threshold: float) -> bool:
        """Whether ``concept`` is scored at ``threshold``: every swept one, or with per-concept thresholds
        (recorded by the weights) only the concept's own, as infer_sam.py applies them."""
        return not self.options.per_concept_thresholds or threshold == self.predictor.threshold_for(concept)

    def _check_cleanup(self, concepts: list[str] | None) -> None:
        """3D clean-up options (``concepts``: the set's, None without volumes): said wrong before the first case."""
        opts = self.options
        if not (opts.largest_component or opts.fill_holes):
            return
        if concepts is None:
            if opts.fill_holes or not isinstance(opts.largest_component, RecordedConcepts):  # asked for, not recorded
                logger.warning("--largest-component / --fill-holes clean up 3D masks; this set has no volumes: ignored")
            return
        try:
            largest_component_flags(opts.largest_component, concepts)
        except UserError as exc:
            raise EvaluationError(str(exc)) from None


@dataclass
class _CaseOutcome:
    """One case's contribution, gathered from the ranks and merged in case order."""

    index: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    coco_results: dict[str, list[dict]] = field(default_factory=dict)
    detections: list[dict[str, Any]] = field(default_factory=list)
    image_id: int | None = None
    failure: dict[str, str] | None = None


# --------------------------------------------------------------------------------------------- #
# Instance metrics (COCO AP)
# --------------------------------------------------------------------------------------------- #
def coco_instance_metrics(dataset: CocoSet, results: list[dict], image_ids: Sequence[int]) -> dict[str, Any]:
    """COCO ``segm`` AP and AP50, overall and per concept, over the evaluated images and concepts.

    Detections are those above the lowest threshold (after NMS). Without ``include_absent`` the model
    was only asked about categories present in each image, so AP sees no false positives on images
    without the concept.
    """
    from pycocotools.cocoeval import COCOeval

    cat_ids = sorted(dataset.prompts)
    out: dict[str, Any] = {"n_detections": len(results), "n_images": len(image_ids)}
    if not image_ids:
        return {**out, "AP": None, "AP50": None, "per_concept": {}}
    if not results:
        return {
            **out,
            "AP": 0.0,
            "AP50": 0.0,
            "per_concept": {dataset.prompts[c]: {"AP": 0.0, "AP50": 0.0} for c in cat_ids},
        }
    with contextlib.redirect_stdout(io.StringIO()) as log:
        gt = dataset.records.mask_index()  # box-only annotations have no segm to match
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("COCOeval:\n%s", log.getvalue())

    def _ap(precision: np.ndarray) -> float | None:
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else None

    prec = ev.eval["precision"]  # [iou thresholds, recall, category, area range, max dets]
    per = {
        dataset.prompts[c]: {"AP": _ap(prec[:, :, k, 0, -1]), "AP50": _ap(prec[0, :, k, 0, -1])}
        for k, c in enumerate(cat_ids)
    }
    stat = lambda v: None if v < 0 else float(v)  # noqa: E731 - COCOeval says -1 for "no ground truth"
    return {**out, "AP": stat(ev.stats[0]), "AP50": stat(ev.stats[1]), "per_concept": per}
