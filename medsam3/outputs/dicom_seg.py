"""DICOM Segmentation (SEG) of a label map, written with highdicom.

Choice: a **BINARY** segmentation with one segment per prompt, built from the label map
(``labels == value``), so the segments never overlap and read back to ``labels.nii.gz`` voxel for
voxel: the label map's overlap rule (the best-scoring prompt wins a contested voxel) is what the
SEG holds. BINARY rather than highdicom's newer LABELMAP type because dcmqi, 3D Slicer
(QuantitativeReporting) and OHIF all read BINARY SEG; segment ``i`` is label value ``i``. Frames
with no voxel of any segment are omitted (highdicom's default), which the standard allows; a
prompt that found nothing keeps its (empty) segment so segment numbers stay label values.

Patient, study and Frame of Reference come from the source images (highdicom copies them); every
source instance and frame is referenced. Manufacturer / software versions name medsam3; each
segment's Algorithm Identification names the weights (base model, adapter) and the prompt.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .concept_codes import ConceptCode, local_scheme_identification
from .files import atomic_path

__all__ = ["Provenance", "Segment", "save_coded_dataset", "write_dicom_seg"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """One segment / ROI: its label value, coded concept and display colour (RGB 0..255)."""

    value: int
    concept: ConceptCode
    color: tuple[int, int, int]


@dataclass
class Provenance:
    """Who made the object: medsam3 and its version, the weights, the run's settings."""

    software_version: str
    base_model: str | None = None
    adapter: str | None = None
    settings: Mapping[str, object] = field(default_factory=dict)
    series_number: int = 9901

    @property
    def manufacturer(self) -> str:
        return "medsam3"

    @property
    def model_name(self) -> str:
        return "medsam3 text-prompted SAM3"

    def algorithm_parameters(self, prompt: str) -> dict[str, str]:
        params = {"prompt": prompt, "base_model": str(self.base_model), "adapter": str(self.adapter)}
        params.update({k: str(v) for k, v in self.settings.items()})
        return params

    def series_description(self, prompts: Sequence[str], kind: str) -> str:
        """'medsam3 SEG: liver, spleen' (LO: at most 64 characters)."""
        text = f"medsam3 {kind}: {', '.join(prompts)}"
        return text if len(text) <= 64 else text[:61] + "..."


def _short(text: str | None, n: int = 64) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


# Type 2 patient/study attributes highdicom copies from the source: when a source lacks one, the copy
# carries it empty ("unknown", as the standard spells it), never a made-up value.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _with_type2(ds):
    missing = [tag for tag in _TYPE2_COPIED if tag not in ds]
    if not missing:
        return ds
    ds = copy.copy(ds)
    for tag in missing:
        setattr(ds, tag, "")
    return ds


def write_dicom_seg(
    source_images: Sequence,
    frames: np.ndarray,
    segments: Sequence[Segment],
    provenance: Provenance,
    path: str | Path,
) -> Path:
    """Write ``frames`` (label values, one (rows, columns) frame per source frame) as a BINARY SEG.

    ``source_images``: the source datasets (headers suffice): one multi-frame dataset, whose frames
    ``frames`` follows in stored order, or single-frame datasets in the order of ``frames``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    frames = np.asarray(frames)
    values = [s.value for s in segments]
    if values != list(range(1, len(segments) + 1)):
        raise ValueError(f"segments must be numbered 1..N in order, got {values}")
    if frames.size and int(frames.max()) > len(segments):
        raise ValueError(f"label value {int(frames.max())} has no segment (only {len(segments)} given)")
    descriptions = []
    for seg in segments:
        concept = seg.concept
        algorithm = hd.AlgorithmIdentificationSequence(
            name="medsam3 SAM3 + LoRA",
            family=codes.cid7162.ArtificialIntelligence,
            version=provenance.software_version,
            source=_short(provenance.adapter or provenance.base_model),
            parameters=provenance.algorithm_parameters(concept.prompt),
        )
        description = hd.seg.SegmentDescription(
            segment_number=seg.value,
            segment_label=concept.label,
            segmented_property_category=concept.category,
            segmented_property_type=concept.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"medsam3 {concept.label}",
            display_color=hd.color.CIELabColor.from_rgb(*seg.color),
        )
        if concept.modifier is not None:
            modifier = hd.sr.CodedConcept(
                concept.modifier.value, concept.modifier.scheme_designator, concept.modifier.meaning
            )
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    prompts = [s.concept.label for s in segments]
    quiet = logging.getLogger("highdicom")  # its INFO lines ("copy attributes of module ...") are not for users
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        seg_ds = _segmentation(hd, source_images, frames, segments, descriptions, provenance, prompts)
    finally:
        quiet.setLevel(level)
    if "FrameOfReferenceUID" not in seg_ds and "PatientOrientation" not in seg_ds:
        # An image without patient geometry (e.g. secondary capture): General Image's Patient Orientation
        # (type 2C) is required then, copied from the source, else empty (unknown).
        seg_ds.PatientOrientation = source_images[0].get("PatientOrientation", "")
    return save_coded_dataset(seg_ds, segments, path)


def save_coded_dataset(ds, segments: Sequence[Segment], path: str | Path) -> Path:
    """Declare the local coding scheme if a segment uses it, then write ``ds`` atomically (SEG and RTSTRUCT)."""
    if any(s.concept.is_local for s in segments):
        ds.CodingSchemeIdentificationSequence = [local_scheme_identification()]
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _segmentation(hd, source_images, frames, segments, descriptions, provenance, prompts):
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=[_with_type2(ds) for ds in source_images],
        pixel_array=frames.astype(np.uint16 if len(segments) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=provenance.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=provenance.manufacturer,
        manufacturer_model_name=provenance.model_name,
        software_versions=provenance.software_version,
        device_serial_number=f"medsam3-{provenance.software_version}",
        content_description=_short(provenance.series_description(prompts, "segmentation")),
        content_label="MEDSAM3",
        series_description=provenance.series_description(prompts, "SEG"),
        # Frames without any segment are left out; with nothing found at all every frame is kept (a SEG needs one).
        omit_empty_frames=bool(np.any(frames)),
    )
