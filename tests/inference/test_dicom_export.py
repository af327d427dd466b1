"""DICOM SEG and RTSTRUCT of a label map, checked by independent readers.

* dcmqi's ``segimage2itkimage`` (PyPI ``dcmqi``) reads the SEG back to masks equal to
  ``labels.nii.gz`` voxel for voxel, compared in patient coordinates (SimpleITK resamples each
  mask onto the label map's grid by physical position);
* plastimatch (Debian) and rt-utils (PyPI, installed ``--no-deps``) rasterise the RTSTRUCT back;
* Debian's ``dciodvfy`` (dicom3tools) finds no errors in either object.

Each independent check skips with the install command when its tool is absent (.ci/run installs
them). The source is a synthetic oblique CT series with anisotropic pixels (tests/conftest.py),
its multi-frame conversion, and the shipped demo CT slice with its UIDs restored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medsam3
from medsam3.errors import UserError
from medsam3.inference.dicom_export import DicomExport, write_dicom_outputs
from medsam3.io import label_map_image, load_volume
from medsam3.outputs import PALETTE

pytest.importorskip("highdicom", reason="the DICOM SEG writer: pip install 'medsam3[dicom-out]'")

PROMPTS = ["liver", "left kidney", "xyzzy plumbus", "spleen"]
DEMO_SLICE = Path(medsam3.__file__).parent / "demo" / "examples" / "ct_dicom_slice.dcm"


def tool(name: str, install: str) -> str:
    """Path of an external checker (PATH or this venv's bin), or skip saying how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} not installed ({install})")
    return found


def labels_for(volume) -> np.ndarray:
    """liver = the organ (with a hole, an island in it and a one-voxel island), left kidney = a block,
    the unknown prompt finds nothing, spleen = a two-voxel line."""
    labels = np.zeros(volume.shape, np.uint8)
    labels[volume.data > 0] = 1
    labels[6:11, 12:19, 4] = 0  # a hole in the organ, wider than two voxels
    labels[8, 15, 4] = 1  # with an island in it
    labels[1, 1, 2] = 1  # an island of one voxel
    labels[16:21, 2:9, 1:5] = 2
    labels[22, 28:30, 6] = 4
    return labels


@pytest.fixture
def series_outputs(ct_series, tmp_path):
    folder, _, _ = ct_series()
    volume = load_volume(folder)
    labels = labels_for(volume)
    out = tmp_path / "out"
    out.mkdir()
    label_map_image(labels, volume).to_filename(out / "labels.nii.gz")
    export = DicomExport(seg=True, rtstruct=True, base_model="facebook/sam3")
    written = write_dicom_outputs(
        folder,
        labels,
        PROMPTS,
        out,
        export,
        affine=volume.affine,
        adapter="lal-Joey/MedSAM3_v1",
        settings={"threshold": 0.5},
    )
    assert written == {"dicom_seg": "seg.dcm", "rtstruct": "rtstruct.dcm"}
    return folder, out, labels


@pytest.fixture
def multiframe_outputs(enhanced_ct, tmp_path):
    path, _, _ = enhanced_ct()
    volume = load_volume(path)
    labels = labels_for(volume)
    out = tmp_path / "out_mf"
    out.mkdir()
    label_map_image(labels, volume).to_filename(out / "labels.nii.gz")
    write_dicom_outputs(path, labels, PROMPTS, out, DicomExport(seg=True, rtstruct=True), affine=volume.affine)
    return path, out, labels


def source_uids(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}


def test_seg_references_every_source_instance_and_copies_the_patient(series_outputs):
    folder, out, _ = series_outputs
    seg = pydicom.dcmread(out / "seg.dcm")
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.SeriesInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in refs.ReferencedInstanceSequence} == source_uids(folder)
    per_frame = {
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame <= source_uids(folder) and len(per_frame) >= 6  # every frame says where it came from
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber"):
        assert seg.get(tag) == src.get(tag), tag
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID not in source_uids(folder)
    assert seg.Manufacturer == "medsam3" and seg.SoftwareVersions == medsam3.__version__
    assert seg.SeriesDescription.startswith("medsam3 SEG: liver, left kidney")
    algo = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmVersion == medsam3.__version__
    for text in ("prompt=left kidney", "base_model=facebook/sam3", "adapter=lal-Joey/MedSAM3_v1", "threshold=0.5"):
        assert text in algo.AlgorithmParameters


def test_seg_carries_snomed_codes_laterality_and_the_local_code(series_outputs):
    _, out, _ = series_outputs
    segments = pydicom.dcmread(out / "seg.dcm").SegmentSequence
    got = {
        s.SegmentNumber: (
            s.SegmentLabel,
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in segments
    }
    assert got[1] == ("liver", "91723000", "SCT", "10200004")
    assert got[2] == ("left kidney", "91723000", "SCT", "64033007")
    modifier = segments[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning) == ("7771000", "SCT", "Left")
    assert got[3][0] == "xyzzy plumbus" and got[3][2] == "99MEDSAM3"
    assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "xyzzy plumbus"
    assert got[4] == ("spleen", "91723000", "SCT", "78961009")
    scheme = pydicom.dcmread(out / "seg.dcm").CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99MEDSAM3"


def test_seg_reads_back_with_highdicom_by_source_instance(series_outputs):
    hd = pytest.importorskip("highdicom")
    folder, out, labels = series_outputs
    seg = hd.seg.segread(out / "seg.dcm")
    source = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()),
        key=lambda ds: float(
            np.dot(ds.ImagePositionPatient, np.cross(ds.ImageOrientationPatient[:3], ds.ImageOrientationPatient[3:]))
        ),
    )
    pixels = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in source],
        combine_segments=True,
        skip_overlap_checks=False,
        ignore_spatial_locations=True,
    )
    np.testing.assert_array_equal(pixels, np.transpose(labels, (2, 1, 0)))


def compare_in_patient_space(reference: Path, masks: dict[int, Path]) -> dict[int, np.ndarray]:
    """Each mask resampled (nearest, by physical position) onto the label map's grid."""
    sitk = pytest.importorskip("SimpleITK")
    ref = sitk.ReadImage(str(reference))
    return {
        value: sitk.GetArrayFromImage(
            sitk.Resample(sitk.ReadImage(str(p)), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        ).transpose(2, 1, 0)
        > 0
        for value, p in masks.items()
    }


def dcmqi_masks(seg: Path, out: Path) -> dict[int, Path]:
    exe = tool("segimage2itkimage", "pip install dcmqi")
    out.mkdir()
    proc = subprocess.run(
        [exe, "--inputDICOM", str(seg), "--outputDirectory", str(out), "--outputType", "nifti"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    labels = {s["labelID"]: s["SegmentLabel"] for group in meta["segmentAttributes"] for s in group}
    assert labels == dict(enumerate(PROMPTS, start=1))
    return {int(p.name.split(".")[0]): p for p in out.glob("*.nii.gz")}


@pytest.mark.parametrize("outputs", ["series_outputs", "multiframe_outputs"])
def test_dcmqi_reads_the_seg_back_voxel_for_voxel(outputs, request, tmp_path):
    _, out, labels = request.getfixturevalue(outputs)
    masks = compare_in_patient_space(out / "labels.nii.gz", dcmqi_masks(out / "seg.dcm", tmp_path / "dcmqi"))
    assert sorted(masks) == [1, 2, 3, 4]
    for value, mask in masks.items():
        np.testing.assert_array_equal(mask, labels == value, err_msg=f"segment {value}")
    assert masks[1].sum() > 100 and masks[2].sum() == 5 * 7 * 4 and masks[3].sum() == 0


def dciodvfy_findings(path: Path) -> tuple[list[str], list[str]]:
    exe = tool("dciodvfy", "apt-get install dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@pytest.mark.parametrize("outputs", ["series_outputs", "multiframe_outputs"])
@pytest.mark.parametrize("name", ["seg.dcm", "rtstruct.dcm"])
def test_dciodvfy_finds_no_errors(outputs, name, request):
    _, out, _ = request.getfixturevalue(outputs)
    errors, warnings = dciodvfy_findings(out / name)
    assert errors == []
    # The only warning: our private coding scheme is, by design, not one of the standard's defined terms.
    assert all("99MEDSAM3" in w for w in warnings), warnings


def test_plastimatch_reads_the_rtstruct_back(series_outputs, tmp_path):
    exe = tool("plastimatch", "apt-get install plastimatch")
    folder, out, labels = series_outputs
    prefix = tmp_path / "pm"
    proc = subprocess.run(
        [
            exe,
            "convert",
            "--input",
            str(out / "rtstruct.dcm"),
            "--referenced-ct",
            str(folder),
            "--output-prefix",
            str(prefix),
            "--prefix-format",
            "nii.gz",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {PROMPTS.index(p.name[: -len(".nii.gz")]) + 1: p for p in prefix.glob("*.nii.gz")}
    masks = compare_in_patient_space(out / "labels.nii.gz", files)
    assert set(masks) >= {1, 2, 4}
    for value, mask in masks.items():  # the issue asks for "within one voxel": the keyhole contours give exact
        np.testing.assert_array_equal(mask, labels == value, err_msg=f"ROI {value}")


def test_rt_utils_reads_the_rtstruct_back(ct_series, tmp_path):
    """rt-utils (1.2.7) swaps row/column spacing and rows/columns, so it reads anisotropic or non-square
    images wrongly; on square isotropic pixels its reading is right, and there it must match exactly."""
    pytest.importorskip("rt_utils", reason="pip install --no-deps rt-utils")
    from rt_utils import RTStructBuilder

    folder, _, _ = ct_series(rows=32, columns=32, spacing=(0.8, 0.8), folder_name="square")
    volume = load_volume(folder)
    labels = labels_for(volume)
    out = tmp_path / "out_sq"
    out.mkdir()
    write_dicom_outputs(folder, labels, PROMPTS, out, DicomExport(rtstruct=True), affine=volume.affine)
    rt = RTStructBuilder.create_from(dicom_series_path=str(folder), rt_struct_path=str(out / "rtstruct.dcm"))
    assert rt.get_roi_names() == PROMPTS
    for value in (1, 2, 4):
        mask = rt.get_roi_mask_by_name(PROMPTS[value - 1])  # (rows, columns, slices) for square images
        np.testing.assert_array_equal(mask.transpose(1, 0, 2), labels == value, err_msg=PROMPTS[value - 1])


def test_rtstruct_structure(series_outputs):
    folder, out, _ = series_outputs
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert rt.Modality == "RTSTRUCT" and rt.Manufacturer == "medsam3" and rt.PatientID == src.PatientID
    assert rt.StudyInstanceUID == src.StudyInstanceUID and rt.FrameOfReferenceUID == src.FrameOfReferenceUID
    series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in series.ContourImageSequence} == source_uids(folder)
    assert [r.ROIName for r in rt.StructureSetROISequence] == PROMPTS
    assert [list(c.ROIDisplayColor) for c in rt.ROIContourSequence] == [list(PALETTE[i]) for i in range(4)]
    assert "ContourSequence" not in rt.ROIContourSequence[2]  # the prompt that found nothing: an empty ROI
    codes = [o.RTROIIdentificationCodeSequence[0] for o in rt.RTROIObservationsSequence]
    assert [c.CodeValue for c in codes[:2]] == ["10200004", "18639004"]  # liver, left kidney (pre-coordinated)
    assert codes[2].CodingSchemeDesignator == "99MEDSAM3" and codes[3].CodeValue == "78961009"
    for contour in rt.ROIContourSequence[0].ContourSequence:
        assert contour.ContourGeometricType == "CLOSED_PLANAR" and contour.NumberOfContourPoints >= 3


def test_demo_slice_with_restored_uids(tmp_path):
    """The shipped demo CT slice (its UIDs emptied by an anonymiser, restored here as a PACS export
    would have them): a one-frame SEG and RTSTRUCT that dcmqi and dciodvfy accept."""
    ds = pydicom.dcmread(DEMO_SLICE)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    labels = np.zeros((ds.Rows, ds.Columns), np.uint8)
    labels[200:300, 150:260] = 1
    labels[320:340, 300:330] = 2
    out = tmp_path / "out2d"
    out.mkdir()
    write_dicom_outputs(path, labels, ["liver", "right kidney"], out, DicomExport(seg=True, rtstruct=True))
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert seg.NumberOfFrames == 2  # one frame per segment, the slice's
    for name in ("seg.dcm", "rtstruct.dcm"):
        errors, _ = dciodvfy_findings(out / name)
        assert errors == [], name


def test_image_without_patient_geometry_gets_a_seg_and_no_rtstruct(tmp_path):
    """A secondary-capture image (no position, orientation or Frame of Reference, no type 2 patient
    attributes): a valid SEG whose missing type 2 attributes stay empty; an RTSTRUCT is refused."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Capture", "SC1", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 40, 50, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((40, 50), np.uint8).tobytes()
    path = tmp_path / "capture.dcm"
    ds.save_as(path, enforce_file_format=True)
    labels = np.zeros((40, 50), np.uint8)
    labels[12:28, 12:38] = 1
    out = tmp_path / "out"
    out.mkdir()
    assert write_dicom_outputs(path, labels, ["lesion"], out, DicomExport(seg=True)) == {"dicom_seg": "seg.dcm"}
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.PatientID == "SC1" and seg.PatientBirthDate == "" and "FrameOfReferenceUID" not in seg
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), labels.astype(bool))
    with pytest.raises(UserError, match="patient coordinates"):
        write_dicom_outputs(path, labels, ["lesion"], out, DicomExport(rtstruct=True))
    errors, _ = dciodvfy_findings(out / "seg.dcm")
    assert errors == []


def test_multiframe_outputs_reference_the_file_and_its_frames(multiframe_outputs):
    path, out, labels = multiframe_outputs
    src = pydicom.dcmread(path, stop_before_pixels=True)
    seg = pydicom.dcmread(out / "seg.dcm")
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [str(r.ReferencedSOPInstanceUID) for r in refs] == [str(src.SOPInstanceUID)]
    frames = {
        (str(s.ReferencedSOPInstanceUID), int(s.ReferencedFrameNumber))
        for f in seg.PerFrameFunctionalGroupsSequence
        for s in f.DerivationImageSequence[0].SourceImageSequence
    }
    assert {n for _, n in frames} <= set(range(1, 9)) and {u for u, _ in frames} == {str(src.SOPInstanceUID)}
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert sorted(int(r.ReferencedFrameNumber) for r in series.ContourImageSequence) == list(range(1, 9))
    for contour in rt.ROIContourSequence[1].ContourSequence:  # the kidney block: on its frames, in its plane
        ref = contour.ContourImageSequence[0]
        frame = src.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        origin = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        iop = np.array(src.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
        np.testing.assert_allclose((points - origin) @ normal, 0, atol=1e-3)  # on the referenced frame's plane
