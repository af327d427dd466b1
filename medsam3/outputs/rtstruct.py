"""RT Structure Set (RTSTRUCT) of a label map: one ROI per prompt, planar contours per slice.

Built with pydicom (datasets and UIDs) and OpenCV's ``findContours`` (outer borders and holes),
both already medsam3 dependencies, not with rt-utils: rt-utils (last release January 2023) pins
``opencv-python`` -- a second, GUI build of OpenCV that overwrites the ``cv2`` of our
``opencv-python-headless`` -- and a Python 3.6 ``dataclasses`` backport, and builds its
structure set from whole-series datasets it reads itself; here the frames and their patient
positions come from :mod:`medsam3.io.dicom_source`, the same geometry the SEG uses.

Contours run a quarter pixel inside the border of a region: OpenCV traces the border-pixel centres
of the mask upsampled 2x, so a reader that fills pixels whose centre is inside the polygon
(plastimatch, 3D Slicer) and one that rounds the vertices and fills the polygon with its edges
(rt-utils) both get the mask back exactly, and the enclosed area is within a quarter pixel of the
region's. Points map to patient coordinates with the source frame's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing (DICOM PS3.3 C.7.6.2.1.1). A hole is cut into its
region's polygon (a keyhole), so every reader sees the same area. The label
map's overlap rule holds: a voxel belongs to one ROI at most. A prompt that found nothing keeps
its ROI, with no contour.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .concept_codes import local_scheme_identification
from .dicom_seg import Provenance, Segment, save_coded_dataset
from .files import atomic_path

__all__ = ["ImagePlane", "mask_contours", "write_rtstruct"]

logger = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# RT Referenced Study Sequence refers to the study as a "Study Component Management" object
# (1.2.840.10008.3.1.2.3.2), the class PS3.3 C.8.8.5 examples and most TPS exports use.
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.2"

_PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class ImagePlane:
    """Where one source frame lies: its instance (and frame number for multi-frame), its position (LPS mm)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    position: np.ndarray


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D boolean mask as (N, 2) arrays of (column, row) pixel coordinates.

    One polygon per connected region, a quarter pixel inside its border (traced on the mask
    upsampled 2x; see the module docstring), its holes joined to it by keyhole cuts
    (:func:`_keyhole`). A region inside a hole is a polygon of its own.
    """
    import cv2

    up = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8).repeat(2, axis=0).repeat(2, axis=1))
    found, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not found:
        return []
    points = [(c.reshape(-1, 2).astype(np.float64) - 0.5) / 2.0 for c in found]
    parents = hierarchy[0][:, 3]
    return [
        _keyhole(points[i], [points[j] for j in np.flatnonzero(parents == i)])
        for i in np.flatnonzero(parents == -1)
    ]


def _keyhole(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One simple polygon from a border and its holes: each hole joined by a zero-width cut.

    Readers disagree on separate hole contours (plastimatch fills them in; others apply the
    even-odd rule), while a keyhole polygon reads the same everywhere. Holes are joined from the
    rightmost one leftwards, each by a horizontal cut from its rightmost vertex to the first
    point of the polygon built so far to its right, which is visible from it: no hole not yet
    joined reaches further right. OpenCV traces holes against the border's direction, so the
    joined hole keeps the opposite orientation a keyhole needs.
    """
    polygon = outer
    for hole in sorted(holes, key=lambda h: -h[:, 0].max()):
        start = int(np.lexsort((hole[:, 1], -hole[:, 0]))[0])  # rightmost, then topmost vertex
        px, py = hole[start]
        a, b = polygon, np.roll(polygon, -1, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(
                a[:, 1] == b[:, 1],  # horizontal edge: hit at its nearer end when on the ray's line
                np.where(a[:, 1] == py, np.minimum(a[:, 0], b[:, 0]), np.inf),
                a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1]),
            )
        crosses = (np.minimum(a[:, 1], b[:, 1]) <= py) & (py <= np.maximum(a[:, 1], b[:, 1])) & (x > px)
        x = np.where(crosses, x, np.inf)
        where = int(np.argmin(x)) if np.isfinite(x).any() else -1
        best = x[where] if where >= 0 else np.inf
        if where < 0:  # cannot happen for a hole inside its border; keep the hole's area rather than fail
            logger.warning("a hole could not be joined to its border; it is left filled")
            continue
        hit = np.array([[best, py]])
        loop = np.concatenate([hole[start:], hole[: start + 1]])
        polygon = np.concatenate([polygon[: where + 1], hit, loop, hit, polygon[where + 1 :]])
    return polygon


def _to_patient(points: np.ndarray, plane: ImagePlane, orientation: np.ndarray, spacing: tuple[float, float]):
    """(column, row) pixel coordinates -> patient coordinates (PS3.3 C.7.6.2.1.1)."""
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    dr, dc = spacing
    xyz = plane.position[None, :] + points[:, :1] * dc * row_dir[None, :] + points[:, 1:2] * dr * col_dir[None, :]
    return xyz


_CONTOUR_DATA = 0x30060050


def _decimal_strings(tag: int, values: np.ndarray):
    """A DS element of many numbers, encoded at once (micrometre precision): pydicom would parse and
    validate each of a large structure set's millions of coordinates one by one (25 s on a 20-slice CT)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = "\\".join(np.char.mod("%.3f", values).tolist()).encode("ascii")
    if len(raw) % 2:
        raw += b" "
    return RawDataElement(Tag(tag), "DS", len(raw), raw, 0, True, True)


def _image_ref(plane: ImagePlane):
    from pydicom import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = plane.sop_class_uid
    ref.ReferencedSOPInstanceUID = plane.sop_instance_uid
    if plane.frame_number is not None:
        ref.ReferencedFrameNumber = plane.frame_number
    return ref


def _code_item(code):
    from pydicom import Dataset

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def write_rtstruct(
    reference: object,
    planes: Sequence[ImagePlane],
    frames: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    frame_of_reference_uid: str,
    segments: Sequence[Segment],
    provenance: Provenance,
    path: str | Path,
) -> Path:
    """Write the label values of ``frames`` (one (rows, columns) frame per plane) as an RTSTRUCT.

    ``reference``: a source dataset, from which patient and study identifiers are copied (never
    invented). ``planes`` say which instance/frame and where each frame lies.
    """
    from pydicom import Dataset, FileMetaDataset
    from pydicom.charset import default_encoding
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    if len(planes) != len(frames):
        raise ValueError(f"{len(frames)} frames for {len(planes)} image planes")
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_uid = generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # 4-byte lengths: a contour may exceed 64 KB
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for tag in _PATIENT_STUDY_TAGS:  # type 2 where absent: present and empty
        setattr(ds, tag, reference.get(tag, ""))  # type: ignore[attr-defined]
    ds.FrameOfReferenceUID = frame_of_reference_uid  # Frame of Reference module
    ds.PositionReferenceIndicator = reference.get("PositionReferenceIndicator", "")  # type: ignore[attr-defined]
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = provenance.series_number + 1
    prompts = [s.concept.label for s in segments]
    ds.SeriesDescription = provenance.series_description(prompts, "RTSTRUCT")
    ds.OperatorsName = ""
    ds.Manufacturer = provenance.manufacturer
    ds.ManufacturerModelName = provenance.model_name
    ds.SoftwareVersions = provenance.software_version
    ds.DeviceSerialNumber = f"medsam3-{provenance.software_version}"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "medsam3"
    ds.StructureSetName = "medsam3"
    ds.StructureSetDescription = provenance.series_description(prompts, "structures")
    ds.StructureSetDate, ds.StructureSetTime = date, time

    contour_images = []
    seen = set()
    for plane in planes:
        key = (plane.sop_instance_uid, plane.frame_number)
        if key not in seen:
            seen.add(key)
            contour_images.append(_image_ref(plane))
    series = Dataset()
    series.SeriesInstanceUID = reference.SeriesInstanceUID  # type: ignore[attr-defined]
    series.ContourImageSequence = contour_images
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = reference.StudyInstanceUID  # type: ignore[attr-defined]
    study.RTReferencedSeriesSequence = [series]
    for_item = Dataset()
    for_item.FrameOfReferenceUID = frame_of_reference_uid
    for_item.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [for_item]

    roi_items, contour_items, observation_items = [], [], []
    for seg in segments:
        concept = seg.concept
        roi = Dataset()
        roi.ROINumber = seg.value
        roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        roi.ROIName = concept.label
        roi.ROIDescription = f"text prompt: {concept.prompt}"[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = "; ".join(
            f"{k}={v}" for k, v in provenance.algorithm_parameters(concept.prompt).items()
        )[:64]
        roi_items.append(roi)

        contour_seq = []
        for plane, frame in zip(planes, frames):
            mask = frame == seg.value
            if not mask.any():
                continue
            for pts in mask_contours(mask):
                xyz = _to_patient(pts, plane, orientation, pixel_spacing)
                item = Dataset()
                item.ContourImageSequence = [_image_ref(plane)]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(xyz)
                item.ContourNumber = len(contour_seq) + 1
                item[_CONTOUR_DATA] = _decimal_strings(_CONTOUR_DATA, xyz.ravel())
                item.set_original_encoding(True, True, default_encoding)  # written as encoded, not parsed again
                contour_seq.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(seg.color)
        roi_contour.ReferencedROINumber = seg.value
        if contour_seq:  # a prompt that found nothing: an ROI without contours
            roi_contour.ContourSequence = contour_seq
        contour_items.append(roi_contour)

        obs = Dataset()
        obs.ObservationNumber = seg.value
        obs.ReferencedROINumber = seg.value
        obs.ROIObservationLabel = concept.label[:16]
        obs.RTROIIdentificationCodeSequence = [_code_item(concept.rt_code or concept.type)]
        obs.RTROIInterpretedType = "ORGAN" if concept.category.value == "91723000" else ""
        obs.ROIInterpreter = ""
        observation_items.append(obs)
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observation_items
    return save_coded_dataset(ds, segments, path)
