"""Inference on many inputs (2D images and 3D volumes) with one model, resumable and loss-free.

Layout under ``output_dir``::

    <name>/overlay.png  detections.json  [masks/00_<prompt>.png ...]     a 2D input
    <name>/labels.nii.gz  legend.json  montage.png  [image.nii.gz]        a volume
          [masks/00_<prompt>.nii.gz ...]
    summary.csv        one row per input and prompt, appended and flushed as each input finishes
    coco_results.json  2D detections as COCO results (RLE masks, scores, category = prompt)
    coco_images.json   the images and categories those results refer to:
                       COCO("coco_images.json").loadRes("coco_results.json")
    failures.json      inputs that could not be processed, with the reason

Every file is written atomically. An input is done when its ``detections.json`` / ``legend.json``
exists (written last); ``skip_existing`` skips those (if they were made with the same prompts) and
rebuilds their summary rows and COCO entries from them, so an interrupted batch resumes where it
stopped. An input that fails is logged, listed and skipped; the others go on.

Under torchrun the inputs are split over the ranks by size and rank 0 merges the batch files at the
end (:func:`run_batch`); the per-input layout is the same.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..errors import DiskFullError
from ..io import Image2D, Volume, label_map_image, save_volume
from ..io.windows import WindowSpec
from ..outputs import (
    ImageOutputPaths,
    atomic_path,
    coco_results,
    label_montage,
    overlay_labels,
    prompt_slug,
    save_png,
    write_image_outputs,
    write_json,
)
from ..outputs.summary_csv import SummaryWriter, summary_row, write_summary
from .dicom_export import DicomExport, image_dicom_outputs, volume_dicom_outputs
from .distributed import DistInfo, barrier, gather_to_main, path_bytes, shard_by_size
from .inputs import LoadedInput, discover_inputs, load_input, output_names
from .postprocess import Detections
from .postprocess3d import LargestComponent
from .volume import VolumeSegmentation, segment_volume

__all__ = [
    "BatchReport",
    "InferenceOptions",
    "LoadedInput",
    "discover_inputs",
    "load_input",
    "output_names",
    "process_image",
    "process_volume",
    "run_batch",
    "write_volume_outputs",
]

logger = logging.getLogger(__name__)

IMAGE_DONE = "detections.json"
VOLUME_DONE = "legend.json"


@dataclass
class InferenceOptions:
    """What to run and what to write, for single inputs and batches alike."""

    prompts: list[str]
    threshold: float = 0.5
    nms_iou: float | None = 0.5
    window: WindowSpec = None
    volume_index: int | None = None
    axis: int | str | None = None
    slice_batch: int | None = None  # None: 8 on CUDA, 1 on CPU (volume_inference.default_slice_batch)
    boxes: list | None = None
    box_labels: list | None = None
    binary_masks: bool = False
    largest_component: LargestComponent = False  # True: every prompt; else the concepts it applies to
    fill_holes: bool = False
    montage_slices: int = 6
    progress: bool = True
    adapter: str | None = None
    concept_thresholds: dict[str, float] = field(default_factory=dict)
    """Per-concept thresholds recorded by the weights (empty with ``--threshold``); ``threshold`` for the rest."""

    def threshold_record(self) -> dict:
        """The thresholds as result files record them (per-concept values only where the weights gave some)."""
        return {
            "threshold": self.threshold,
            **({"concept_thresholds": self.concept_thresholds} if self.concept_thresholds else {}),
        }

    @property
    def model_threshold(self) -> float | None:
        """What the Predictor is given: None lets it apply the per-concept record (the run plan's rule)."""
        return None if self.concept_thresholds else self.threshold

    dicom: DicomExport | None = None  # --dicom-seg / --rtstruct (medsam3.inference.dicom_export)


# -- one input ------------------------------------------------------------------------------------
def _image_rows(path: Path, results: Sequence[Detections], seconds: float) -> list[dict]:
    return [
        summary_row(
            file=str(path),
            kind="image",
            prompt=d.prompt,
            detections=len(d),
            area_px=int(d.semantic_mask().sum()),
            seconds=round(seconds, 3),
            status="ok",
        )
        for d in results
    ]


def segment_image(predictor, image: Image2D, opts: InferenceOptions) -> list[Detections]:
    (results,) = predictor.predict_images(
        [image.rgb],
        opts.prompts,
        boxes=opts.boxes,
        box_labels=opts.box_labels,
        threshold=opts.model_threshold,
        nms_iou=opts.nms_iou,
    )
    return results


def process_image(
    predictor, loaded: LoadedInput, out_dir: Path, opts: InferenceOptions, results: list[Detections] | None = None
) -> dict:
    """Segment a 2D input (unless ``results`` are given) and write ``overlay.png``, optional
    ``masks/``, then ``detections.json``; returns what ``detections.json`` holds."""
    t0 = time.perf_counter()
    image = loaded.image
    if results is None:
        results = segment_image(predictor, image, opts)
    out_dir = Path(out_dir)
    dicom_files = image_dicom_outputs(
        loaded.path, results, image.rgb.shape[:2], out_dir, opts.dicom, adapter=opts.adapter, settings=_settings(opts)
    )
    record, _ = write_image_outputs(
        results,
        image.rgb,
        str(loaded.path),
        ImageOutputPaths(overlay=out_dir / "overlay.png", masks_dir=out_dir / "masks" if opts.binary_masks else None),
        kind="image",
        adapter=opts.adapter,
        **opts.threshold_record(),
        nms_iou=opts.nms_iou,
        intensity=image.intensity,
    )
    seconds = time.perf_counter() - t0
    record["seconds"] = round(seconds, 3)
    record["summary_rows"] = _image_rows(loaded.path, results, seconds)
    if dicom_files:
        record["files"] = dicom_files
    write_json(record, out_dir / IMAGE_DONE)
    for d in results:
        logger.info("  %r: %d detection(s), %d px", d.prompt, len(d), int(d.semantic_mask().sum()))
    return record


def _settings(opts: InferenceOptions) -> dict:
    """The run's settings a DICOM object records as its algorithm parameters."""
    return {**opts.threshold_record(), "nms_iou": opts.nms_iou}


def _montage_slices(seg: VolumeSegmentation, n: int) -> list[int]:
    n_slices = seg.labels.shape[seg.axis]
    other = tuple(i for i in range(3) if i != seg.axis)
    filled = np.flatnonzero((seg.labels > 0).any(axis=other))
    pool = filled if len(filled) else np.arange(n_slices)
    n = min(n, len(pool))
    return sorted({int(pool[round(q)]) for q in np.linspace(0, len(pool) - 1, n)})


def write_volume_outputs(
    volume: Volume, seg: VolumeSegmentation, out_dir: Path, opts: InferenceOptions, seconds: float | None = None
) -> dict:
    """``labels.nii.gz`` (+ ``image.nii.gz`` for DICOM input), optional ``masks/*.nii.gz`` and
    ``montage.png``, then ``legend.json``; returns the legend."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "labels.nii.gz") as tmp:
        label_map_image(seg.labels, volume).to_filename(tmp)
    logger.info(
        "label map -> %s (shape %s, max label %d)",
        out_dir / "labels.nii.gz",
        seg.labels.shape,
        int(seg.labels.max()) if seg.labels.size else 0,
    )
    written = {"label_map": "labels.nii.gz"}
    if volume.header is None:  # DICOM in: the scan too, as NIfTI, so viewers overlay the labels on it
        with atomic_path(out_dir / "image.nii.gz") as tmp:
            save_volume(volume, tmp)
        written["image"] = "image.nii.gz"
    if opts.binary_masks:
        written["binary_masks"] = []
        for k, (prompt, mask) in enumerate(zip(seg.prompts, seg.masks)):
            rel = f"masks/{k:02d}_{prompt_slug(prompt)}.nii.gz"
            with atomic_path(out_dir / rel) as tmp:
                label_map_image(mask.astype(np.uint8), volume).to_filename(tmp)
            written["binary_masks"].append(rel)
    written.update(
        volume_dicom_outputs(
            volume, seg.labels, seg.prompts, out_dir, opts.dicom, adapter=opts.adapter, settings=_settings(opts)
        )
    )
    if opts.montage_slices > 0:
        ks = _montage_slices(seg, opts.montage_slices)
        tiles = [
            overlay_labels(
                volume.slice_rgb(k, seg.axis, seg.settings["reorient"]),
                seg.geometry.to_display(np.take(seg.labels, k, axis=seg.axis)),
            )
            for k in ks
        ]
        names = [f"{p} (unknown concept)" if p in seg.unknown_prompts else p for p in seg.prompts]
        save_png(label_montage(tiles, [f"slice {k}" for k in ks], names), out_dir / "montage.png")
        written["montage"] = "montage.png"
    seconds = seg.seconds if seconds is None else seconds
    entries = seg.legend()  # counts voxels over the whole volume: once
    legend = {
        "input": str(volume.path) if volume.path else None,
        "kind": "volume",
        "shape": list(volume.shape),
        "spacing_mm": [float(s) for s in volume.spacing],
        "affine": np.asarray(volume.affine).tolist(),
        "intensity": volume.intensity_description,
        "slice_axis": seg.axis,
        "plane": seg.geometry.plane,
        "adapter": opts.adapter,
        **seg.settings,
        "prompts": seg.prompts,
        "labels": [{"value": 0, "prompt": "background"}, *entries],
        "files": written,
        "seconds": round(seconds, 3),
        "summary_rows": [
            summary_row(
                file=str(volume.path),
                kind="volume",
                prompt=e["prompt"],
                detections=e["detections"],
                voxels=e["voxels"],
                volume_ml=e["volume_ml"],
                prompt_mask_voxels=e["prompt_mask_voxels"],
                prompt_mask_volume_ml=e["prompt_mask_volume_ml"],
                seconds=round(seconds, 3),
                status="ok",
            )
            for e in entries
        ],
    }
    write_json(legend, out_dir / VOLUME_DONE)
    return legend


def process_volume(predictor, loaded: LoadedInput, out_dir: Path, opts: InferenceOptions) -> dict:
    """Segment a volume and write its outputs; returns the legend (see :func:`write_volume_outputs`)."""
    t0 = time.perf_counter()
    seg = segment_volume(
        predictor,
        loaded.volume,
        opts.prompts,
        axis=opts.axis,
        slice_batch=opts.slice_batch,
        threshold=opts.model_threshold,
        nms_iou=opts.nms_iou,
        boxes=opts.boxes,
        box_labels=opts.box_labels,
        largest_component=opts.largest_component,
        fill_holes=opts.fill_holes,
        progress=opts.progress,
        description=loaded.path.name,
    )
    legend = write_volume_outputs(loaded.volume, seg, out_dir, opts, seconds=time.perf_counter() - t0)
    for e in legend["labels"][1:]:
        logger.info(
            "  %d = %r: %d voxels, %.2f ml in the label map (the prompt's own mask, before overlaps: "
            "%d voxels, %.2f ml); detections on %d slice(s)",
            e["value"],
            e["prompt"],
            e["voxels"],
            e["volume_ml"],
            e["prompt_mask_voxels"],
            e["prompt_mask_volume_ml"],
            e["slices_with_detections"],
        )
        for other, voxels in e["voxels_lost_to"].items():
            logger.info("      %d voxel(s) of %r went to %r (higher score there)", voxels, e["prompt"], other)
        if e["unknown_concept"]:
            logger.warning(
                "      %r is not a concept this model was trained on: label %d is unreliable", e["prompt"], e["value"]
            )
    return legend


# -- many inputs ----------------------------------------------------------------------------------
@dataclass
class BatchReport:
    output_dir: Path
    total: int = 0
    processed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def _done_record(out_dir: Path, prompts: list[str]) -> dict | None:
    for marker in (IMAGE_DONE, VOLUME_DONE):
        path = out_dir / marker
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            got = [p["prompt"] for p in record.get("prompts", [])] if marker == IMAGE_DONE else record.get("prompts")
            if got != prompts:
                logger.warning("%s was made with prompts %s, not %s: processing again", path, got, prompts)
                return None
            return record
    return None


@dataclass
class _Outcome:
    """What one input contributed to the batch files; merged across ranks in input order."""

    index: int
    file: str
    rows: list[dict]
    status: str  # processed | skipped | failed
    coco_image: dict | None = None
    coco_anns: list[dict] = field(default_factory=list)
    error: str | None = None


def run_batch(
    predictor,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    opts: InferenceOptions,
    skip_existing: bool = False,
    dist_info: DistInfo | None = None,
) -> BatchReport:
    """Process every input with ``predictor``; see the module docstring for what is written.

    Under torchrun (``dist_info`` with ``world_size > 1``) each rank takes a share of the inputs
    balanced by size on disk (:func:`~.distributed.shard_by_size`), writes its per-input folders
    and a live ``summary.rank<r>.csv``; at the end rank 0 gathers every rank's outcomes and writes
    ``summary.csv``, ``coco_*.json`` and ``failures.json`` exactly as a one-process run would
    (same rows, same image ids, same bytes), then removes the rank parts. A rank that dies leaves
    its finished inputs on disk, and a rerun with ``skip_existing`` picks them up.
    """
    dist_info = dist_info or DistInfo()
    inputs = [Path(p) for p in inputs]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(inputs)  # over all inputs: every rank names folders alike
    category_ids = {p: i + 1 for i, p in enumerate(opts.prompts)}
    report = BatchReport(output_dir, total=len(inputs))
    if dist_info.enabled:
        mine = shard_by_size([path_bytes(p) for p in inputs], dist_info.world_size)[dist_info.rank]
        logger.info(
            "rank %d of %d: %d of %d input(s), %.1f MB",
            dist_info.rank,
            dist_info.world_size,
            len(mine),
            len(inputs),
            sum(path_bytes(inputs[i]) for i in mine) / 1e6,
        )
        summary = SummaryWriter(output_dir / f"summary.rank{dist_info.rank}.csv")
    else:
        mine = list(range(len(inputs)))
        summary = SummaryWriter(output_dir / "summary.csv")
    outcomes: list[_Outcome] = []

    def coco_entries(image_id: int, path: Path, record: dict) -> tuple[dict, list[dict]]:
        image = {"id": image_id, "file_name": str(path), "height": record["height"], "width": record["width"]}
        return image, coco_results(record, image_id, category_ids)

    def finish(outcome: _Outcome) -> None:
        outcomes.append(outcome)
        summary.add(outcome.rows)
        path = inputs[outcome.index]
        if outcome.status == "failed":
            report.failures.append((path, outcome.error))
        else:
            getattr(report, outcome.status).append(path)

    t_start = time.perf_counter()
    completed = False
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=len(mine),
                unit="file",
                desc="inputs" if not dist_info.enabled else f"rank {dist_info.rank} inputs",
                disable=not opts.progress or not dist_info.is_main,
                dynamic_ncols=True,
            ) as bar,
        ):
            for index in mine:
                path, image_id = inputs[index], index + 1
                bar.set_postfix_str(path.name, refresh=False)
                out_dir = output_dir / names[index]
                record = _done_record(out_dir, opts.prompts) if skip_existing else None
                if record is not None:
                    logger.info("%s: already done in %s, skipped", path, out_dir)
                    outcome = _Outcome(index, str(path), record.get("summary_rows", []), "skipped")
                    if record.get("kind") != "volume":
                        outcome.coco_image, outcome.coco_anns = coco_entries(image_id, path, record)
                    finish(outcome)
                    bar.update(1)
                    continue
                try:
                    loaded = load_input(path, opts.window, opts.volume_index)
                    if loaded.kind == "volume":
                        record = process_volume(predictor, loaded, out_dir, opts)
                        outcome = _Outcome(index, str(path), record["summary_rows"], "processed")
                    else:
                        record = process_image(predictor, loaded, out_dir, opts)
                        outcome = _Outcome(index, str(path), record["summary_rows"], "processed")
                        outcome.coco_image, outcome.coco_anns = coco_entries(image_id, path, record)
                except DiskFullError:  # every later input would fail alike: stop, finished outputs stay
                    raise
                except Exception as exc:  # one bad input must not stop the batch
                    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                    logger.error("FAILED %s: %s", path, message)
                    logger.debug("traceback", exc_info=True)
                    row = summary_row(file=str(path), status="failed", error=message)
                    outcome = _Outcome(index, str(path), [row], "failed", error=message)
                finish(outcome)
                bar.update(1)
        completed = True
    finally:
        if not dist_info.enabled:
            _write_batch_files(output_dir, report.total, outcomes, opts.prompts, summary=False)
        elif completed:  # an interrupted rank must not wait for the others: its parts stay for --skip-existing
            report = _merge_ranks(output_dir, report, outcomes, opts.prompts, dist_info)
        elapsed = time.perf_counter() - t_start
        done = len(report.processed) + len(report.skipped)
        logger.info(
            "%d of %d input(s) done (%d skipped as already done) in %.1f s -> %s",
            done,
            report.total,
            len(report.skipped),
            elapsed,
            output_dir,
        )
        if report.failures:
            logger.error(
                "%d input(s) failed: %s (see %s)",
                len(report.failures),
                ", ".join(str(p) for p, _ in report.failures),
                output_dir / "failures.json",
            )
    return report


def _merge_ranks(
    output_dir: Path, local: BatchReport, outcomes: list[_Outcome], prompts: list[str], dist_info: DistInfo
) -> BatchReport:
    """Rank 0 writes the batch files from every rank's outcomes; all ranks wait for it to finish.

    Rank 0's report covers the whole batch (its exit code is the batch's); the others keep theirs.
    """
    gathered = gather_to_main(outcomes)
    report = local
    if gathered is not None:
        merged = sorted((o for part in gathered for o in part), key=lambda o: o.index)
        report = BatchReport(output_dir, total=local.total)
        for o in merged:
            if o.status == "failed":
                report.failures.append((Path(o.file), o.error))
            else:
                getattr(report, o.status).append(Path(o.file))
        _write_batch_files(output_dir, local.total, merged, prompts, summary=True)
        for r in range(dist_info.world_size):
            (output_dir / f"summary.rank{r}.csv").unlink(missing_ok=True)
    barrier()  # nobody exits (and makes torchrun stop the others) before the files are written
    return report


def _write_batch_files(
    output_dir: Path, total: int, outcomes: list[_Outcome], prompts: list[str], summary: bool
) -> None:
    """``failures.json``, ``coco_images.json``/``coco_results.json`` (and, merging ranks, ``summary.csv``)."""
    outcomes = sorted(outcomes, key=lambda o: o.index)
    if summary:
        write_summary(output_dir / "summary.csv", [row for o in outcomes for row in o.rows])
    failures = [o for o in outcomes if o.status == "failed"]
    write_json(
        {
            "total": total,
            "failed": len(failures),
            "failures": [{"file": o.file, "error": o.error} for o in failures],
        },
        output_dir / "failures.json",
    )
    images = [o.coco_image for o in outcomes if o.coco_image is not None]
    if images:
        anns = [a for o in outcomes for a in o.coco_anns]
        write_json(
            {
                "info": {"description": "medsam3 batch inference; category = text prompt"},
                "images": images,
                "annotations": [],
                "categories": [{"id": i + 1, "name": p} for i, p in enumerate(prompts)],
            },
            output_dir / "coco_images.json",
        )
        write_json(anns, output_dir / "coco_results.json")
        if not anns:
            logger.warning("no 2D detections: coco_results.json is empty (pycocotools' loadRes rejects an empty list)")
