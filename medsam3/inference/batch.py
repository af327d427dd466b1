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
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..io import Image2D, Volume, is_volume_path, label_map_image, load_image2d, load_volume, save_volume
from ..io.dicom import is_dicom_file
from ..io.formats import SUPPORTED_EXTENSIONS, extension
from ..io.windows import WindowSpec
from ..outputs import (
    atomic_path,
    coco_results,
    label_montage,
    overlay_detections,
    overlay_labels,
    prompt_slug,
    results_to_json,
    save_png,
    write_json,
    write_prompt_masks,
)
from .postprocess import Detections
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

SUMMARY_FIELDS = [
    "file",
    "kind",
    "prompt",
    "detections",
    "area_px",
    "voxels",
    "volume_ml",
    "seconds",
    "status",
    "error",
]
IMAGE_DONE = "detections.json"
VOLUME_DONE = "legend.json"
_LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")
_GLOB_CHARS = set("*?[")


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
    largest_component: bool = False
    fill_holes: bool = False
    montage_slices: int = 6
    progress: bool = True
    adapter: str | None = None


@dataclass
class LoadedInput:
    path: Path
    image: Image2D | None = None
    volume: Volume | None = None

    @property
    def kind(self) -> str:
        return "volume" if self.volume is not None else "image"


# -- inputs ----------------------------------------------------------------------------------------
def _looks_like_dicom_folder(folder: Path) -> bool:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")][:20]
    if not files:
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")][:20]
    return any(extension(p) in (".dcm", ".dicom", ".dic", ".ima") or is_dicom_file(p) for p in files)


def _scan_dir(folder: Path, exclude: Path | None) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or (exclude is not None and p.resolve() == exclude):
            continue
        if p.is_dir():
            if _looks_like_dicom_folder(p):
                out.append(p)  # a DICOM series
            else:
                logger.info("skipping folder %s: no DICOM files in it (use a glob for nested images)", p)
        elif extension(p) in SUPPORTED_EXTENSIONS or (p.suffix == "" and is_dicom_file(p)):
            out.append(p)
        else:
            logger.debug("skipping %s: not an image extension", p)
    return out


def discover_inputs(spec: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """The inputs named by ``spec``: a folder (its images, DICOM files and DICOM series
    sub-folders, not recursive), a glob pattern (``**`` recurses), or a text file with one path per
    line (``#`` comments; relative paths are tried from the current folder, then from the list's
    folder). Listed paths that do not exist are kept, so the batch reports them as failures.
    """
    text = str(spec)
    excluded = Path(exclude).resolve() if exclude is not None else None
    path = Path(text).expanduser()
    if path.is_dir():
        found = _scan_dir(path, excluded)
        where = f"folder {path}"
    elif path.is_file() and (
        extension(path) in _LIST_SUFFIXES or (extension(path) not in SUPPORTED_EXTENSIONS and not is_dicom_file(path))
    ):
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--input-dir {path}: not a folder, an image or a text file of paths ({exc})") from None
        found = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            item = Path(line).expanduser()
            if not item.is_absolute() and not item.exists() and (path.parent / item).exists():
                item = path.parent / item
            found.append(item)
        where = f"list {path}"
    elif _GLOB_CHARS & set(text):
        found = [
            Path(p)
            for p in sorted(glob.glob(text, recursive=True))
            if not Path(p).name.startswith(".") and (Path(p).is_file() or Path(p).is_dir())
        ]
        where = f"pattern {text!r}"
    elif path.is_file():
        found, where = [path], str(path)
    else:
        raise FileNotFoundError(f"--input-dir {text}: no such folder, list file or matching files")
    if not found:
        raise FileNotFoundError(
            f"no images or volumes found in {where} (supported: "
            f"{', '.join(sorted(set(SUPPORTED_EXTENSIONS)))}, DICOM series folders)"
        )
    return found


def input_name(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", *SUPPORTED_EXTENSIONS):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return prompt_slug(name) if name else "input"


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct, stable output folder name per input (file name without extension; repeats get
    the extension, then a counter)."""
    names: list[str] = []
    used: set[str] = set()
    for p in paths:
        base = input_name(p)
        name = base
        if name in used:
            name = f"{base}_{prompt_slug(extension(p).lstrip('.'))}" if extension(p) else base
        counter = 2
        while name in used:
            name = f"{base}_{counter}"
            counter += 1
        used.add(name)
        names.append(name)
    return names


def load_input(path: str | Path, window: WindowSpec = None, volume_index: int | None = None) -> LoadedInput:
    """Read an image or a volume (whichever the path is); raises ImageReadError when it cannot."""
    path = Path(path)
    if is_volume_path(path):
        return LoadedInput(path, volume=load_volume(path, window, volume_index))
    if volume_index not in (None, 0):
        raise ValueError(f"--volume-index applies to 4D NIfTI volumes, and {path} is a 2D image")
    return LoadedInput(path, image=load_image2d(path, window))


# -- one input ------------------------------------------------------------------------------------
def summary_row(**values: Any) -> dict:
    """One summary.csv row; fields not given are left empty."""
    return {name: values.get(name, "") for name in SUMMARY_FIELDS}


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
        threshold=opts.threshold,
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
    save_png(overlay_detections(image.rgb, results), out_dir / "overlay.png")
    if opts.binary_masks:
        write_prompt_masks(results, out_dir / "masks")
    seconds = time.perf_counter() - t0
    record = results_to_json(
        results,
        str(loaded.path),
        image.rgb.shape[:2],
        kind="image",
        adapter=opts.adapter,
        threshold=opts.threshold,
        nms_iou=opts.nms_iou,
        intensity=image.intensity,
        seconds=round(seconds, 3),
    )
    record["summary_rows"] = _image_rows(loaded.path, results, seconds)
    write_json(record, out_dir / IMAGE_DONE)
    for d in results:
        logger.info("  %r: %d detection(s), %d px", d.prompt, len(d), int(d.semantic_mask().sum()))
    return record


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
    if opts.montage_slices > 0:
        ks = _montage_slices(seg, opts.montage_slices)
        tiles = [
            overlay_labels(
                volume.slice_rgb(k, seg.axis, seg.settings["reorient"]),
                seg.geometry.to_display(np.take(seg.labels, k, axis=seg.axis)),
            )
            for k in ks
        ]
        save_png(label_montage(tiles, [f"slice {k}" for k in ks], seg.prompts), out_dir / "montage.png")
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
        threshold=opts.threshold,
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
            "  %d = %r: %d voxels, %.2f ml, detections on %d slice(s)",
            e["value"],
            e["prompt"],
            e["voxels"],
            e["volume_ml"],
            e["slices_with_detections"],
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


class _Summary:
    """summary.csv, rewritten at the start, then one flushed append per finished input."""

    def __init__(self, path: Path):
        self.path = path
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            csv.DictWriter(fh, SUMMARY_FIELDS).writeheader()

    def add(self, rows: list[dict]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, SUMMARY_FIELDS).writerows(rows)
            fh.flush()


def run_batch(
    predictor, inputs: Sequence[str | Path], output_dir: str | Path, opts: InferenceOptions, skip_existing: bool = False
) -> BatchReport:
    """Process every input with ``predictor``; see the module docstring for what is written."""
    inputs = [Path(p) for p in inputs]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(inputs)
    category_ids = {p: i + 1 for i, p in enumerate(opts.prompts)}
    report = BatchReport(output_dir, total=len(inputs))
    summary = _Summary(output_dir / "summary.csv")
    coco_images: list[dict] = []
    coco_anns: list[dict] = []

    def add_image(image_id: int, path: Path, record: dict) -> None:
        coco_images.append(
            {"id": image_id, "file_name": str(path), "height": record["height"], "width": record["width"]}
        )
        coco_anns.extend(coco_results(record, image_id, category_ids))

    t_start = time.perf_counter()
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(total=len(inputs), unit="file", desc="inputs", disable=not opts.progress, dynamic_ncols=True) as bar,
        ):
            for image_id, (path, name) in enumerate(zip(inputs, names), start=1):
                bar.set_postfix_str(path.name, refresh=False)
                out_dir = output_dir / name
                record = _done_record(out_dir, opts.prompts) if skip_existing else None
                if record is not None:
                    logger.info("%s: already done in %s, skipped", path, out_dir)
                    report.skipped.append(path)
                    summary.add(record.get("summary_rows", []))
                    if record.get("kind") != "volume":
                        add_image(image_id, path, record)
                    bar.update(1)
                    continue
                try:
                    loaded = load_input(path, opts.window, opts.volume_index)
                    if loaded.kind == "volume":
                        record = process_volume(predictor, loaded, out_dir, opts)
                    else:
                        record = process_image(predictor, loaded, out_dir, opts)
                        add_image(image_id, path, record)
                    summary.add(record["summary_rows"])
                    report.processed.append(path)
                except Exception as exc:  # one bad input must not stop the batch
                    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                    logger.error("FAILED %s: %s", path, message)
                    logger.debug("traceback", exc_info=True)
                    report.failures.append((path, message))
                    summary.add([summary_row(file=str(path), status="failed", error=message)])
                bar.update(1)
    finally:
        _write_batch_files(output_dir, report, coco_images, coco_anns, opts.prompts)
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


def _write_batch_files(
    output_dir: Path, report: BatchReport, images: list[dict], anns: list[dict], prompts: list[str]
) -> None:
    write_json(
        {
            "total": report.total,
            "failed": len(report.failures),
            "failures": [{"file": str(p), "error": e} for p, e in report.failures],
        },
        output_dir / "failures.json",
    )
    if images:
        images = sorted(images, key=lambda im: im["id"])
        write_json(
            {
                "info": {"description": "medsam3 batch inference; category = text prompt"},
                "images": images,
                "annotations": [],
                "categories": [{"id": i + 1, "name": p} for i, p in enumerate(prompts)],
            },
            output_dir / "coco_images.json",
        )
        write_json(sorted(anns, key=lambda a: a["image_id"]), output_dir / "coco_results.json")
        if not anns:
            logger.warning("no 2D detections: coco_results.json is empty (pycocotools' loadRes rejects an empty list)")


def load_summary(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
