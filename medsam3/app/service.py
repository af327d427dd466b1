"""What the web page does, without the page: read uploads, segment, re-filter, write downloads.

Speed comes from two caches shared by every user of one server, both keyed by content:

- the image embedding (the vision pass, ~90% of a forward) per image, so a new prompt, box set or
  threshold never runs the vision encoder again;
- the raw outputs of each (image, prompt, boxes): scores, boxes and low-resolution mask logits
  of all queries, so moving the threshold or NMS slider only re-runs the post-processing
  (:func:`medsam3.inference.postprocess.postprocess_query_outputs`, the function ``Predictor``
  uses), never the model.

Files are written by the functions ``infer_sam.py`` uses (``outputs`` writers for 2D,
:func:`medsam3.inference.batch.write_volume_outputs` for volumes), so a download equals the CLI's
file for the same input, prompts and settings. Model calls hold one lock: concurrent users wait
their turn (the page also queues them).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DiskFullError, UserError, disk_full_errors
from ..inference.batch import InferenceOptions, write_volume_outputs
from ..inference.dicom_export import auto_dicom_export, image_dicom_outputs
from ..inference.inputs import LoadedInput, load_input
from ..inference.postprocess import Detections
from ..inference.postprocess3d import largest_component_option
from ..inference.volume import VolumeSegmentation, resolve_axis, segment_volume
from ..io import WINDOW_PRESETS
from ..outputs import (
    ImageOutputPaths,
    label_montage,
    overlay_labels,
    write_image_outputs,
)
from .limits import UploadLimits, UploadRefused, prune_work_dir

__all__ = [
    "WINDOW_CHOICES",
    "AppService",
    "Box",
    "ImageResult",
    "Upload",
    "VolumeResult",
    "format_boxes",
    "parse_boxes",
    "parse_prompts",
]

logger = logging.getLogger(__name__)

WINDOW_CHOICES = ["auto", "dicom", "percentile", *WINDOW_PRESETS]
_BOX_LINE = re.compile(r"^\s*([+-]|pos(?:itive)?|neg(?:ative)?)?\s*(.*)$", re.IGNORECASE)


# -- prompts and boxes as the page's text fields hold them -----------------------------------------
def parse_prompts(text: str | None) -> list[str]:
    """Concepts from a text field: separated by commas, semicolons or new lines; repeats dropped."""
    prompts = [p.strip() for p in re.split(r"[,;\n]", text or "")]
    prompts = list(dict.fromkeys(p for p in prompts if p))
    if not prompts:
        raise UserError('type at least one concept to segment, e.g. "liver" (several: "liver, spleen")')
    return prompts


@dataclass(frozen=True)
class Box:
    """An exemplar box in pixels of the displayed image: positive ("this") or negative ("not this")."""

    x1: float
    y1: float
    x2: float
    y2: float
    positive: bool = True

    def line(self) -> str:
        sign = "+" if self.positive else "-"
        return f"{sign} {self.x1:g} {self.y1:g} {self.x2:g} {self.y2:g}"


def parse_boxes(text: str | None) -> list[Box]:
    """Boxes from the page's box field, one per line: ``[+|-] x1 y1 x2 y2`` (``-`` = negative)."""
    boxes = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        if not raw.strip():
            continue
        sign, rest = _BOX_LINE.match(raw).groups()
        try:
            values = [float(v) for v in re.split(r"[\s,]+", rest.strip())]
        except ValueError:
            values = []
        if len(values) != 4:
            raise UserError(f"box line {number} {raw.strip()!r}: write '+ x1 y1 x2 y2' (or '-' for a negative box)")
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise UserError(f"box line {number} {raw.strip()!r}: needs x2 > x1 and y2 > y1 (corners in pixels)")
        boxes.append(Box(x1, y1, x2, y2, positive=not (sign or "+").lower().startswith(("-", "n"))))
    return boxes


def format_boxes(boxes: list[Box]) -> str:
    return "\n".join(b.line() for b in boxes)


def box_corners(first: tuple[float, float], second: tuple[float, float], positive: bool) -> Box:
    """The box spanned by two clicked corners, in any order."""
    (xa, ya), (xb, yb) = first, second
    x1, x2 = sorted((xa, xb))
    y1, y2 = sorted((ya, yb))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise UserError("the two corners of a box must differ in x and in y; click two opposite corners")
    return Box(x1, y1, x2, y2, positive)


def _box_arrays(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) xyxy float32 and (K,) labels (1 positive, 0 negative): what ``Predictor`` rows hold."""
    xyxy = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=np.float32).reshape(-1, 4)
    return xyxy, np.asarray([1 if b.positive else 0 for b in boxes], dtype=np.int64)


def _box_options(boxes: list[Box]) -> tuple[list | None, list | None]:
    """Boxes and labels as ``infer_sam.py``'s ``--box`` / ``--neg-box`` give them (positive first)."""
    if not boxes:
        return None, None
    ordered = [b for b in boxes if b.positive] + [b for b in boxes if not b.positive]
    return [[b.x1, b.y1, b.x2, b.y2] for b in ordered], [1 if b.positive else 0 for b in ordered]


PREVIEW_MIN_SIDE = 512


def preview_factor(height: int, width: int) -> int:
    """Integer enlargement for the clickable picture, so a small scan is big enough to click on.

    The page maps a click back to image pixels correctly only when the browser shrinks the picture
    (never when it stretches it), so small images are enlarged here, by nearest neighbour.
    """
    return max(1, PREVIEW_MIN_SIDE // max(height, width))


def draw_boxes(
    rgb: np.ndarray, boxes: list[Box], pending: tuple[float, float] | None = None, factor: int = 1
) -> np.ndarray:
    """The picture enlarged ``factor`` times with the exemplar boxes drawn (green positive, red
    negative) and a clicked first corner; coordinates are in pixels of ``rgb``."""
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(rgb.shape[:2]) / 300))
    for b in boxes:
        xy = tuple(v * factor for v in (b.x1, b.y1, b.x2, b.y2))
        draw.rectangle(xy, outline=(0, 220, 0) if b.positive else (230, 0, 0), width=width)
    if pending is not None:
        x, y = (v * factor for v in pending)
        r = 2 * width + 1
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 220, 0), width=width)
    return np.asarray(image)


# -- what a session holds ----------------------------------------------------------------------------
@dataclass
class Upload:
    """A read input: a 2D image or a volume, and the file name the outputs record."""

    loaded: LoadedInput
    name: str
    window: str
    key: str  # content hash of the model's picture (2D): the embedding cache's key

    @property
    def kind(self) -> str:
        return self.loaded.kind

    @property
    def slice_axis(self) -> int:
        return resolve_axis(self.loaded.volume, "auto")

    @property
    def n_slices(self) -> int:
        return self.loaded.volume.shape[self.slice_axis] if self.kind == "volume" else 1

    @property
    def preview_factor(self) -> int:
        """How many times the clickable picture is enlarged (:func:`preview_factor`)."""
        height, width = self.picture(0).shape[:2]
        return preview_factor(height, width)

    def picture(self, slice_index: int = 0) -> np.ndarray:
        """What boxes are drawn on: the image, or one volume slice in display orientation."""
        if self.kind == "image":
            return self.loaded.image.rgb
        k = int(np.clip(slice_index, 0, self.n_slices - 1))
        return self.loaded.volume.slice_rgb(k, self.slice_axis, True)

    def describe(self) -> str:
        if self.kind == "image":
            im = self.loaded.image
            spacing = f", pixel {im.spacing[0]:g} x {im.spacing[1]:g} mm" if im.spacing else ""
            return f"{self.name}: {im.rgb.shape[1]} x {im.rgb.shape[0]} px{spacing}; {im.intensity}"
        vol = self.loaded.volume
        shape = " x ".join(str(n) for n in vol.shape)
        spacing = " x ".join(f"{s:g}" for s in vol.spacing)
        return f"{self.name}: volume {shape} voxels ({spacing} mm), {self.n_slices} slices; {vol.intensity_description}"


@dataclass
class ImageResult:
    """Detections on a 2D image and how they were made."""

    prompts: list[str]
    boxes: list[Box]
    threshold: float
    nms_iou: float
    results: list[Detections]
    embed_seconds: float | None  # None: the embedding came from the cache
    prompt_seconds: float  # model passes for new prompts plus post-processing
    new_prompts: int

    warnings: list[str] = field(default_factory=list)
    concept_thresholds: dict[str, float] = field(default_factory=dict)
    """``per_concept``: each prompt's threshold by the weights' record (``threshold`` is then the recorded one)."""

    def timing(self) -> str:
        embed = (
            "image embedding cached" if self.embed_seconds is None else f"image embedding {self.embed_seconds:.2f} s"
        )
        return f"{embed}; {self.new_prompts} new prompt(s) + filtering {self.prompt_seconds:.2f} s"


@dataclass
class VolumeResult:
    """A volume's segmentation, its legend and the files written for it."""

    seg: VolumeSegmentation
    legend: dict
    files: list[Path]
    seconds: float
    threshold: float
    nms_iou: float
    prompts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class AppService:
    """The model and its caches, shared by every browser session of one server.

    Memory (full SAM3, fp32, measured by ``scripts/bench_app.py`` at 504 px): one image embedding
    54 MiB, one prompt's raw outputs (200 queries' mask logits) 16 MiB; both grow 4x at 1008 px.
    """

    def __init__(
        self,
        predictor,
        work_dir: str | Path | None = None,
        image_cache_size: int = 4,
        output_cache_size: int = 16,
        allow_unknown: bool = False,
        limits: UploadLimits | None = None,
    ):
        self.predictor = predictor
        self.allow_unknown = allow_unknown
        self.adapter = getattr(predictor, "adapter_origin", None)
        plan = getattr(predictor, "plan", None)
        self.default_threshold = plan.threshold if plan is not None else 0.5
        """Where the threshold slider starts: the run plan's (the same as infer_sam.py's and medsam3-evaluate's)."""
        self.records_concept_thresholds = bool(plan is not None and plan.concept_thresholds)
        """The weights record a threshold per concept: ``per_concept=True`` applies them, as infer_sam.py does."""
        self.largest_component = largest_component_option(None, recorded=plan.largest_component if plan else ())
        """The 3D clean-up the weights record, applied to every volume as infer_sam.py applies it."""
        self._own_work_dir = not work_dir
        self.base_model = getattr(getattr(predictor, "model", None), "name_or_path", None)
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="medsam3_app_"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._embeddings: OrderedDict[str, tuple] = OrderedDict()
        self._outputs: OrderedDict[tuple, tuple] = OrderedDict()
        self._image_cache_size = image_cache_size
        self._output_cache_size = output_cache_size
        self._counter = itertools.count()
        self.limits = limits or UploadLimits()

    def new_dir(self, kind: str) -> Path:
        """A fresh folder under the work dir, one per upload or run (never shared between sessions)."""
        prune_work_dir(self.work_dir, self.limits.keep_seconds)
        path = self.work_dir / f"{kind}-{next(self._counter):05d}-{os.getpid()}"
        path.mkdir(parents=True)
        return path

    # -- uploads ---------------------------------------------------------------------------------
    def open(self, path: str | Path, window: str = "auto", volume_index: int | None = None) -> Upload:
        """Read an uploaded file: an image, a DICOM file, a NIfTI, or a zip of a DICOM series.

        Raises ValueError (ImageReadError for unreadable files) with a message for the page.
        """
        path = Path(path)
        self.limits.check_upload(path)
        target = self._unzip(path) if path.suffix.lower() == ".zip" else path
        window_spec = None if window in (None, "", "auto") else window
        loaded = load_input(target, window_spec, volume_index)
        key = ""
        if loaded.kind == "image":
            rgb = loaded.image.rgb
            key = hashlib.sha256(rgb.tobytes() + repr(rgb.shape).encode()).hexdigest()
        return Upload(loaded=loaded, name=path.name, window=window or "auto", key=key)

    def _unzip(self, path: Path) -> Path:
        """A zipped DICOM series (or one zipped file): unpacked; returns the series folder or the file."""
        try:
            with zipfile.ZipFile(path) as zf:
                members = [
                    m
                    for m in zf.infolist()
                    if not m.is_dir() and "__MACOSX" not in m.filename and not Path(m.filename).name.startswith(".")
                ]
                self.limits.check_zip(path.name, members)
                dest = self.new_dir("unzipped")
                with disk_full_errors(dest, "the unpacked upload"):
                    # where each member landed: zipfile drops absolute paths and '..' from member names
                    files = [Path(zf.extract(m, dest)) for m in members]
        except (UploadRefused, DiskFullError):
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            raise UploadRefused(
                f"{path.name}: not a readable zip file ({type(exc).__name__}: {exc}); zip the DICOM series folder again"
            ) from exc
        if len(files) == 1:
            return files[0]
        return Path(os.path.commonpath([f.parent for f in files]))

    # -- 2D ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the temporary work folder this service made (uploads, downloads); a given ``work_dir`` stays."""
        if self._own_work_dir and self.work_dir.exists():
            shutil.rmtree(self.work_dir)
            logger.info("removed %s", self.work_dir)

    def check_prompts(self, prompts: list[str]) -> list[str]:
        """The CLI's rule: prompts outside the model's concepts are refused unless the app allows them."""
        plan = getattr(self.predictor, "plan", None)
        return plan.check_prompts(prompts, self.allow_unknown) if plan is not None else []

    def segment_image(
        self,
        upload: Upload,
        prompts: list[str],
        boxes: list[Box],
        threshold: float,
        nms_iou: float,
        per_concept: bool = False,
    ) -> ImageResult:
        """Detections for ``prompts`` (and exemplar ``boxes``, shared by all prompts) on a 2D upload.

        The vision encoder runs only for an image not in the cache; the prompt path only for
        (prompt, boxes) pairs not run on this image before. ``per_concept`` (weights that record a
        threshold per concept): each prompt at the weights' own threshold, as infer_sam.py without
        ``--threshold`` applies them, instead of ``threshold`` for all.
        """
        if upload.kind != "image":
            raise ValueError("segment_image takes a 2D image; volumes go through segment_volume")
        warnings = self.check_prompts(prompts)
        with self._lock:
            t0 = time.perf_counter()
            entry = self._embeddings.get(upload.key)
            embed_seconds = None
            if entry is None:
                entry = self.predictor.encode_images([upload.loaded.image.rgb])
                self._remember(self._embeddings, upload.key, entry, self._image_cache_size)
                embed_seconds = time.perf_counter() - t0
            else:
                self._embeddings.move_to_end(upload.key)
            vision, sizes = entry
            t1 = time.perf_counter()
            boxes_key = tuple(boxes)
            missing = [p for p in prompts if (upload.key, p, boxes_key) not in self._outputs]
            row_boxes = _box_arrays(boxes)
            rows = [(0, prompt, row_boxes) for prompt in missing]
            for raw in self.predictor.raw_outputs(vision, sizes, rows):
                # copies, so evicting one prompt frees its memory (a view would pin its whole batch)
                self._remember(
                    self._outputs, (upload.key, raw.prompt, boxes_key), raw.detached(), self._output_cache_size
                )
            threshold, own = self._thresholds(prompts, threshold, per_concept)
            results = self._filter(upload, prompts, boxes_key, threshold, nms_iou, own)
            seconds = time.perf_counter() - t1
        logger.info(
            "%s: %d prompt(s) (%d new) in %.2f s, embedding %s",
            upload.name,
            len(prompts),
            len(missing),
            seconds,
            "cached" if embed_seconds is None else f"{embed_seconds:.2f} s",
        )
        return ImageResult(
            prompts, list(boxes), threshold, nms_iou, results, embed_seconds, seconds, len(missing), warnings, own
        )

    def refilter(
        self, upload: Upload, previous: ImageResult, threshold: float, nms_iou: float, per_concept: bool = False
    ) -> ImageResult:
        """``previous`` with a new threshold and NMS IoU, from the cached raw outputs (no model pass)."""
        with self._lock:
            t0 = time.perf_counter()
            boxes_key = tuple(previous.boxes)
            if any((upload.key, p, boxes_key) not in self._outputs for p in previous.prompts):
                raise UserError("these results left the cache (other images were run since); press Run again")
            threshold, own = self._thresholds(previous.prompts, threshold, per_concept)
            results = self._filter(upload, previous.prompts, boxes_key, threshold, nms_iou, own)
            seconds = time.perf_counter() - t0
        return ImageResult(
            previous.prompts, previous.boxes, threshold, nms_iou, results, None, seconds, 0, previous.warnings, own
        )

    def _thresholds(self, prompts: list[str], threshold: float, per_concept: bool) -> tuple[float, dict[str, float]]:
        """(threshold to record, {prompt: its own}): with ``per_concept`` on weights that record one per
        concept, each prompt's own and the recorded default; else the slider's ``threshold`` for all."""
        if not (per_concept and self.records_concept_thresholds):
            return threshold, {}
        return self.default_threshold, {p: self.predictor.plan.threshold_for(p) for p in prompts}

    def _filter(self, upload, prompts, boxes_key, threshold, nms_iou, own: dict[str, float]) -> list[Detections]:
        size = upload.loaded.image.rgb.shape[:2]
        plan = getattr(self.predictor, "plan", None)
        out = []
        for prompt in prompts:
            key = (upload.key, prompt, boxes_key)
            self._outputs.move_to_end(key)
            det = self._outputs[key].detections(size, own.get(prompt, threshold), nms_iou)
            det.unknown_concept = bool(plan is not None and plan.unknown_prompts([prompt]))
            out.append(det)
        return out

    @staticmethod
    def _remember(cache: OrderedDict, key, value, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    def write_image_outputs(self, upload: Upload, result: ImageResult) -> list[Path]:
        """``infer_sam.py``'s 2D files for these results: overlay PNG, detections JSON, one mask PNG per prompt.

        Named as ``infer_sam.py --image NAME --json detections.json --masks-dir masks`` names them;
        the JSON records the uploaded file's name as ``image``.
        """
        out_dir = self.new_dir("run")
        paths = ImageOutputPaths(
            overlay=out_dir / f"{Path(upload.name).stem}_medsam3.png",
            detections_json=out_dir / "detections.json",
            masks_dir=out_dir / "masks",
        )
        _, written = write_image_outputs(
            result.results,
            upload.loaded.image.rgb,
            upload.name,
            paths,
            adapter=self.adapter,
            threshold=result.threshold,
            **({"concept_thresholds": result.concept_thresholds} if result.concept_thresholds else {}),
            nms_iou=result.nms_iou,
        )
        dicom = image_dicom_outputs(  # a DICOM upload: seg.dcm and rtstruct.dcm too
            upload.loaded.path,
            result.results,
            upload.loaded.image.rgb.shape[:2],
            out_dir,
            auto_dicom_export(upload.loaded.path, self.base_model),
            adapter=self.adapter,
            settings={
                "threshold": result.threshold,
                **({"concept_thresholds": result.concept_thresholds} if result.concept_thresholds else {}),
                "nms_iou": result.nms_iou,
            },
        )
        # overlay, detections.json, the masks, then the DICOM files
        return [written[0], written[-1], *written[1:-1], *(out_dir / f for f in dicom.values())]

    def detection_rows(self, upload: Upload, result: ImageResult) -> list[list]:
        """One table row per detection: prompt, rank, score, area in px and, with a pixel spacing, mm²."""
        spacing = upload.loaded.image.spacing
        rows = []
        for det in result.results:
            if not len(det):
                rows.append([det.prompt, 0, None, 0, None])
            for rank, (score, mask) in enumerate(zip(det.scores, det.masks), start=1):
                area = int(mask.sum())
                mm2 = round(area * spacing[0] * spacing[1], 2) if spacing else None
                rows.append([det.prompt, rank, round(float(score), 4), area, mm2])
        return rows

    # -- volumes -----------------------------------------------------------------------------------
    def segment_volume(
        self,
        upload: Upload,
        prompts: list[str],
        boxes: list[Box],
        threshold: float,
        nms_iou: float,
        per_concept: bool = False,
    ) -> VolumeResult:
        """Every slice for every prompt (:func:`medsam3.inference.volume.segment_volume`) and the files
        ``infer_sam.py`` writes for a volume (``labels.nii.gz``, ``legend.json``, ``montage.png``);
        ``per_concept`` as in :meth:`segment_image`."""
        if upload.kind != "volume":
            raise ValueError("segment_volume takes a volume; 2D images go through segment_image")
        warnings = self.check_prompts(prompts)
        box_list, box_labels = _box_options(boxes)
        volume = upload.loaded.volume
        threshold, own = self._thresholds(prompts, threshold, per_concept)
        with self._lock:
            t0 = time.perf_counter()
            seg = segment_volume(
                self.predictor,
                volume,
                prompts,
                axis="auto",
                threshold=None if own else threshold,
                nms_iou=nms_iou,
                boxes=box_list,
                box_labels=box_labels,
                largest_component=self.largest_component,
                description=upload.name,
            )
            seconds = time.perf_counter() - t0
        opts = InferenceOptions(
            prompts=prompts,
            threshold=threshold,
            concept_thresholds=own,
            nms_iou=nms_iou,
            window=None if upload.window == "auto" else upload.window,
            axis="auto",
            boxes=box_list,
            box_labels=box_labels,
            largest_component=self.largest_component,
            progress=False,
            adapter=self.adapter,
            dicom=auto_dicom_export(volume.path, self.base_model),  # a DICOM upload: seg.dcm and rtstruct.dcm too
        )
        out_dir = self.new_dir("run")
        legend = write_volume_outputs(volume, seg, out_dir, opts, seconds=seconds)
        files = [out_dir / legend["files"]["label_map"], out_dir / "legend.json"]
        files += [
            out_dir / legend["files"][k] for k in ("image", "montage", "dicom_seg", "rtstruct") if k in legend["files"]
        ]
        logger.info("%s: %d slice(s) x %d prompt(s) in %.1f s", upload.name, upload.n_slices, len(prompts), seconds)
        return VolumeResult(seg, legend, files, seconds, threshold, nms_iou, prompts, warnings)

    @staticmethod
    def volume_rows(result: VolumeResult) -> list[list]:
        """One table row per prompt: label value, detections, slices, voxels and ml in the label map."""
        return [
            [e["prompt"], e["value"], e["detections"], e["slices_with_detections"], e["voxels"], e["volume_ml"]]
            for e in result.legend["labels"][1:]
        ]

    @staticmethod
    def volume_overlay(upload: Upload, result: VolumeResult, slice_index: int) -> Image.Image:
        """Slice ``slice_index`` with the label map over it and a legend, drawn as the montage draws it."""
        seg = result.seg
        k = int(np.clip(slice_index, 0, seg.labels.shape[seg.axis] - 1))
        picture = upload.loaded.volume.slice_rgb(k, seg.axis, seg.settings["reorient"])
        tile = overlay_labels(picture, seg.geometry.to_display(np.take(seg.labels, k, axis=seg.axis)))
        return label_montage([tile], [f"slice {k}"], seg.prompts)
