"""DICOM outputs of a run: a DICOM SEG and/or an RTSTRUCT that reference the source images.

Glue between the leaves: :mod:`medsam3.io.dicom_source` says which source instance / frame each
label-map slice came from and where it lies; :mod:`medsam3.outputs.concept_codes` codes each
prompt; :mod:`medsam3.outputs.dicom_seg` and :mod:`medsam3.outputs.rtstruct` write the objects.
Called once per input after ``labels.nii.gz`` is written (volumes) or the detections (2D DICOM),
from the CLI, the batch mode and the web app alike, so all three write the same files:
``seg.dcm`` and ``rtstruct.dcm`` in the input's output folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..io.dicom_source import DicomSource, DicomSourceError, read_dicom_source
from ..outputs.concept_codes import ConceptCode, code_prompt, load_code_table
from ..outputs.dicom_seg import Provenance, Segment, write_dicom_seg
from ..outputs.overlays import PALETTE
from ..outputs.rtstruct import ImagePlane, write_rtstruct

__all__ = [
    "DicomExport",
    "RTSTRUCT_FILE",
    "auto_dicom_export",
    "SEG_FILE",
    "dicom_export",
    "image_dicom_outputs",
    "labels_from_detections",
    "volume_dicom_outputs",
    "write_dicom_outputs",
]

logger = logging.getLogger(__name__)

SEG_FILE = "seg.dcm"
RTSTRUCT_FILE = "rtstruct.dcm"


@dataclass
class DicomExport:
    """Which DICOM objects to write, the user's code table, and the base model's name for provenance."""

    seg: bool = False
    rtstruct: bool = False
    codes: dict[str, ConceptCode] = field(default_factory=dict)
    base_model: str | None = None

    @property
    def enabled(self) -> bool:
        return self.seg or self.rtstruct


def dicom_export(seg: bool, rtstruct: bool, codes_file: str | None = None, base_model: str | None = None):
    """The :class:`DicomExport` of the flags (None when neither is asked); reads and checks the
    code table now, so a bad file is reported before the model loads."""
    if not (seg or rtstruct):
        return None
    if seg and not has_highdicom():
        raise UserError(
            "--dicom-seg writes DICOM SEG with highdicom, which is not installed: pip install 'medsam3[dicom-out]'"
        )
    codes = load_code_table(codes_file) if codes_file else {}
    return DicomExport(seg=seg, rtstruct=rtstruct, codes=codes, base_model=base_model)


def has_highdicom() -> bool:
    """highdicom (the optional extra ``dicom-out``) writes the SEG; the RTSTRUCT needs only core dependencies."""
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None


def is_dicom_volume(meta: dict) -> bool:
    return meta.get("source") in ("dicom_series", "dicom_file")


def labels_from_detections(results: Sequence, shape: tuple[int, int]) -> np.ndarray:
    """A 2D label map from per-prompt detections, with the volume's overlap rule: a pixel goes to the
    prompt whose detection covering it scores highest (value ``i + 1`` = ``results[i]``)."""
    scores = np.zeros((len(results), *shape), dtype=np.float32)
    for j, det in enumerate(results):
        for mask, score in zip(det.masks, det.scores):
            np.maximum(scores[j], np.where(mask, np.float32(score), np.float32(0)), out=scores[j])
    if not len(results):
        return np.zeros(shape, dtype=np.uint8)
    return np.where(scores.max(axis=0) > 0, scores.argmax(axis=0) + 1, 0).astype(
        np.uint8 if len(results) < 256 else np.uint16
    )


def _segments(prompts: Sequence[str], codes: dict[str, ConceptCode]) -> list[Segment]:
    return [
        Segment(i + 1, code_prompt(p, codes), tuple(int(c) for c in PALETTE[i % len(PALETTE)]))
        for i, p in enumerate(prompts)
    ]


def _stored_order(source: DicomSource, frames: np.ndarray) -> np.ndarray:
    """Frames in slice order -> the multi-frame file's stored frame order."""
    out = np.zeros_like(frames)
    for k, f in enumerate(source.frames):
        out[(f.frame_number or 1) - 1] = frames[k]
    return out


def write_dicom_outputs(
    source_path: str | Path,
    labels: np.ndarray,
    prompts: Sequence[str],
    out_dir: str | Path,
    export: DicomExport,
    *,
    affine: np.ndarray | None = None,
    adapter: str | None = None,
    settings: dict | None = None,
) -> dict[str, str]:
    """Write ``seg.dcm`` / ``rtstruct.dcm`` for ``labels`` computed on the DICOM at ``source_path``.

    ``labels``: the label map in medsam3's voxel order, (columns, rows, slices) for a volume (with
    its RAS ``affine``) or (rows, columns) for a 2D image. Returns ``{"dicom_seg": "seg.dcm", ...}``
    for the legend. Raises :class:`~medsam3.io.dicom_source.DicomSourceError` (a user error) when the
    source cannot be referenced.
    """
    out_dir = Path(out_dir)
    source = read_dicom_source(source_path)
    frames = source.label_frames(labels, affine)
    segments = _segments(prompts, export.codes)
    provenance = Provenance(
        software_version=__version__, base_model=export.base_model, adapter=adapter, settings=settings or {}
    )
    for seg in segments:
        if not np.any(frames == seg.value):
            logger.warning(
                "prompt %r found nothing: kept as an empty segment / ROI %d in the DICOM outputs",
                seg.concept.prompt,
                seg.value,
            )
    written: dict[str, str] = {}
    if export.seg:
        if source.multiframe:
            images, seg_frames = source.datasets, _stored_order(source, frames)
        else:
            images = [source.datasets[f.dataset_index] for f in source.frames]
            seg_frames = frames
        write_dicom_seg(images, seg_frames, segments, provenance, out_dir / SEG_FILE)
        written["dicom_seg"] = SEG_FILE
        logger.info(
            "DICOM SEG -> %s (%d segment(s), %d source frame(s))", out_dir / SEG_FILE, len(segments), len(frames)
        )
    if export.rtstruct:
        if not source.has_geometry or source.pixel_spacing is None or not source.frame_of_reference_uid:
            raise UserError(
                f"{source_path}: an RTSTRUCT needs images placed in patient coordinates (ImagePositionPatient, "
                "ImageOrientationPatient, PixelSpacing, FrameOfReferenceUID); this source has none. "
                "Use --dicom-seg alone for it"
            )
        planes = [
            ImagePlane(
                str(source.datasets[f.dataset_index].SOPClassUID), f.sop_instance_uid, f.frame_number, f.position
            )
            for f in source.frames
        ]
        write_rtstruct(
            source.datasets[0],
            planes,
            frames,
            source.orientation,
            source.pixel_spacing,
            source.frame_of_reference_uid,
            segments,
            provenance,
            out_dir / RTSTRUCT_FILE,
        )
        written["rtstruct"] = RTSTRUCT_FILE
        logger.info("RTSTRUCT -> %s", out_dir / RTSTRUCT_FILE)
    return written


def volume_dicom_outputs(
    volume, labels: np.ndarray, prompts: Sequence[str], out_dir: str | Path, export: DicomExport | None, **provenance
) -> dict[str, str]:
    """:func:`write_dicom_outputs` for a volume's label map; nothing (with a warning) for a non-DICOM volume."""
    if export is None or not export.enabled:
        return {}
    if not is_dicom_volume(volume.meta) or volume.path is None:
        logger.warning(
            "%s is not DICOM: no DICOM SEG/RTSTRUCT for it (they reference DICOM source images)", volume.path
        )
        return {}
    return write_dicom_outputs(volume.path, labels, prompts, out_dir, export, affine=volume.affine, **provenance)


def image_dicom_outputs(
    path: str | Path,
    results: Sequence,
    shape: tuple[int, int],
    out_dir: str | Path,
    export: DicomExport | None,
    **provenance,
) -> dict[str, str]:
    """:func:`write_dicom_outputs` for a 2D DICOM image's detections; nothing (with a warning) for other images."""
    if export is None or not export.enabled:
        return {}
    from ..io.formats import detect_format

    if detect_format(path) != "dicom":
        logger.warning("%s is not DICOM: no DICOM SEG/RTSTRUCT for it (they reference DICOM source images)", path)
        return {}
    labels = labels_from_detections(results, shape)
    return write_dicom_outputs(path, labels, [d.prompt for d in results], out_dir, export, **provenance)


def auto_dicom_export(path: str | Path | None, base_model: str | None = None) -> DicomExport | None:
    """Both DICOM objects for a DICOM input that can be referenced (the web app's downloads), else None.

    A DICOM source that cannot be referenced (mixed geometry, UIDs emptied by an anonymiser) is
    said in one warning and gets no DICOM outputs; its other outputs are written as usual.
    """
    if path is None:
        return None
    from ..io.formats import detect_format

    if detect_format(path) not in ("dicom", "dicom_dir"):
        return None
    try:
        source = read_dicom_source(path)
    except DicomSourceError as exc:
        logger.warning("no DICOM SEG/RTSTRUCT for %s: %s", path, exc)
        return None
    seg = has_highdicom()
    if not seg:
        logger.info("no DICOM SEG for %s: highdicom is not installed (pip install 'medsam3[dicom-out]')", path)
    rtstruct = source.has_geometry and bool(source.frame_of_reference_uid)
    return DicomExport(seg=seg, rtstruct=rtstruct, base_model=base_model) if seg or rtstruct else None
