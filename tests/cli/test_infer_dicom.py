"""``infer_sam.py --dicom-seg --rtstruct`` end to end: the real CLI, the real model path, files read back.

The tiny random SAM3 at threshold 0 marks arbitrary, irregular regions: a good test of the
encoding (what labels.nii.gz holds must come back from seg.dcm voxel for voxel), not of the model.
The shipped demo model runs the same path on the prompts the issue names (marked slow).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medsam3
from medsam3.cli.infer import main

pytest.importorskip("highdicom", reason="the DICOM SEG writer: pip install 'medsam3[dicom-out]'")

PROMPTS = ["liver", "spleen", "left kidney", "xyzzy plumbus"]
DEMO_SLICE = Path(medsam3.__file__).parent / "demo" / "examples" / "ct_dicom_slice.dcm"


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def seg_label_frames(seg_path: Path, folder: Path) -> np.ndarray:
    """The SEG as a label map in medsam3's (columns, rows, slices) order, read with highdicom by source instance."""
    import highdicom as hd

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    normal = np.cross(sources[0].ImageOrientationPatient[:3], sources[0].ImageOrientationPatient[3:])
    sources.sort(key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in sources], combine_segments=True, ignore_spatial_locations=True
    )
    return np.transpose(pixels, (2, 1, 0))


def test_series_to_seg_and_rtstruct(ct_series, tiny_config, tmp_path, caplog):
    folder, _, _ = ct_series()
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    argv = ["--config", tiny_config, "--weights", "none", "--image", folder, "--prompt", *PROMPTS]
    assert run_cli(*argv, "--threshold", 0, "--dicom-seg", "--rtstruct", "--output-dir", out, "-q") == 0
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    assert len(np.unique(labels)) >= 3, "the test needs a label map with several prompts in it"
    np.testing.assert_array_equal(seg_label_frames(out / "seg.dcm", folder), labels)
    seg, rt = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "rtstruct.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == PROMPTS
    assert [r.ROIName for r in rt.StructureSetROISequence] == PROMPTS
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert seg.SegmentSequence[3].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99MEDSAM3"
    assert str(Path(tiny_config).parent) not in seg.SeriesDescription
    legend = (out / "legend.json").read_text()
    assert '"dicom_seg": "seg.dcm"' in legend and '"rtstruct": "rtstruct.dcm"' in legend
    assert any("xyzzy plumbus" in r.getMessage() and "99MEDSAM3" in r.getMessage() for r in caplog.records)


def test_prompt_that_finds_nothing_keeps_an_empty_segment_and_exits_0(ct_series, tiny_config, tmp_path, caplog):
    folder, _, _ = ct_series()
    out = tmp_path / "out"
    argv = ["--config", tiny_config, "--weights", "none", "--image", folder, "--prompt", "liver", "spleen"]
    assert run_cli(*argv, "--threshold", 1.0, "--dicom-seg", "--rtstruct", "--output-dir", out, "-q") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'liver' found nothing" in w for w in warnings) and any("'spleen' found nothing" in w for w in warnings)
    seg = pydicom.dcmread(out / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
    assert not seg.pixel_array.any()
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    assert all("ContourSequence" not in c for c in rt.ROIContourSequence)


def test_multiframe_to_seg(enhanced_ct, tiny_config, tmp_path):
    path, _, _ = enhanced_ct()
    out = tmp_path / "out"
    argv = ["--config", tiny_config, "--weights", "none", "--image", path, "--prompt", "liver", "kidney"]
    assert run_cli(*argv, "--threshold", 0, "--dicom-seg", "--rtstruct", "--output-dir", out, "-q") == 0
    import highdicom as hd

    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    seg = hd.seg.segread(out / "seg.dcm")
    src = pydicom.dcmread(path, stop_before_pixels=True)
    frames = seg.get_pixels_by_source_frame(
        str(src.SOPInstanceUID), list(range(1, 9)), combine_segments=True, ignore_spatial_locations=True
    )  # stored frame order; the volume is in slice order
    positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in src.PerFrameFunctionalGroupsSequence]
    normal = np.cross(
        src.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient[:3],
        src.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient[3:],
    )
    order = np.argsort([np.dot(p, normal) for p in positions])
    np.testing.assert_array_equal(np.transpose(frames[order], (2, 1, 0)), labels)


def test_batch_of_dicom_series_and_a_nifti(ct_series, tiny_config, tmp_path, caplog):
    one, _, _ = ct_series(folder_name="scans/a")
    two, _, _ = ct_series(n=5, folder_name="scans/b")
    volume = nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4))
    volume.to_filename(tmp_path / "scans" / "c.nii.gz")
    out = tmp_path / "results"
    argv = ["--config", tiny_config, "--weights", "none", "--input-dir", tmp_path / "scans", "--prompt", "liver"]
    assert run_cli(*argv, "--threshold", 0, "--dicom-seg", "--output-dir", out, "-q") == 0
    for name, folder in (("a", one), ("b", two)):
        labels = np.asarray(nib.load(out / name / "labels.nii.gz").dataobj)
        np.testing.assert_array_equal(seg_label_frames(out / name / "seg.dcm", folder), labels)
        assert not (out / name / "rtstruct.dcm").exists()
    assert not (out / "c" / "seg.dcm").exists()
    assert any("c.nii.gz is not DICOM" in r.getMessage() for r in caplog.records)


def test_codes_file_maps_a_prompt(ct_series, tiny_config, tmp_path):
    folder, _, _ = ct_series()
    codes = tmp_path / "codes.yaml"
    codes.write_text(
        "xyzzy plumbus:\n  category: [91723000, SCT, Anatomical Structure]\n  type: [32764006, SCT, Portal vein]\n"
    )
    out = tmp_path / "out"
    argv = ["--config", tiny_config, "--weights", "none", "--image", folder, "--prompt", "xyzzy plumbus"]
    assert run_cli(*argv, "--dicom-seg", "--codes", codes, "--output-dir", out, "-q") == 0
    item = pydicom.dcmread(out / "seg.dcm").SegmentSequence[0]
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "32764006"
    assert item.SegmentLabel == "xyzzy plumbus"
    out2 = tmp_path / "out2"  # the same table from the config key output.codes
    assert run_cli(*argv, "--dicom-seg", "--set", f"output.codes={codes}", "--output-dir", out2, "-q") == 0
    assert (
        pydicom.dcmread(out2 / "seg.dcm").SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue
        == "32764006"
    )


def test_2d_dicom_image(tiny_config, tmp_path):
    ds = pydicom.dcmread(DEMO_SLICE)  # its UIDs were emptied by an anonymiser: restored as a PACS export has them
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    argv = ["--config", tiny_config, "--weights", "none", "--image", path, "--prompt", "liver", "spleen"]
    assert run_cli(*argv, "--threshold", 0, "--dicom-seg", "--rtstruct", "-q") == 0
    out = tmp_path / "slice_medsam3"  # a 2D image's DICOM outputs: its output folder beside it
    seg = pydicom.dcmread(out / "seg.dcm")
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert (out / "rtstruct.dcm").is_file() and (out / "detections.json").is_file()


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("nifti", "is not DICOM"),
        ("mixed", "pixel spacing"),
        ("anonymised", "StudyInstanceUID"),
        ("bad codes", "unknown key"),
        ("propagate", "--propagate"),
    ],
)
def test_bad_input_is_one_error_line_before_the_model_loads(
    case, needle, ct_series, tiny_config, tmp_path, capsys, monkeypatch
):
    import medsam3.inference.predictor as predictor_module

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predictor_module.Predictor, "from_config", no_model)
    extra = []
    if case == "nifti":
        image = tmp_path / "ct.nii.gz"
        nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)).to_filename(image)
    elif case == "mixed":
        image, _, _ = ct_series(tweak=lambda k, ds: setattr(ds, "PixelSpacing", [0.5, 0.5]) if k == 4 else None)
    elif case == "anonymised":
        image = DEMO_SLICE
    else:
        image, _, _ = ct_series()
        if case == "bad codes":
            codes = tmp_path / "codes.yaml"
            codes.write_text("liver:\n  category: [91723000, SCT, Anatomical Structure]\n  typo: [1, SCT, x]\n")
            extra = ["--codes", codes]
        else:
            extra = ["--propagate"]
    argv = ["--config", tiny_config, "--weights", "none", "--image", image, "--prompt", "liver", "--dicom-seg", *extra]
    assert run_cli(*argv) == 2
    line = _error_line(capsys)
    assert line.startswith("infer_sam.py: error:") and needle in line


@pytest.mark.slow
def test_demo_model_on_a_dicom_series(ct_series, tmp_path):
    """The offline demo model, the prompts of the issue, the root script as a user runs it (~30 s)."""
    folder, _, _ = ct_series()
    out = tmp_path / "out"
    script = Path(medsam3.__file__).parents[1] / "infer_sam.py"
    cmd = [
        sys.executable,
        str(script),
        "--weights",
        "demo",
        "--image",
        str(folder),
        "--prompt",
        *PROMPTS,
        "--dicom-seg",
        "--rtstruct",
        "--output-dir",
        str(out),
        "-q",
    ]
    # The demo records its concepts: a free-text prompt would be coded as anatomy the model cannot find.
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "is not a concept this model was trained on" in refused.stderr
    known = [p for p in PROMPTS if p in ("liver", "spleen", "left kidney", "right kidney", "stomach", "aorta")]
    cmd[cmd.index("--prompt") + 1 : cmd.index("--dicom-seg")] = known
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    np.testing.assert_array_equal(seg_label_frames(out / "seg.dcm", folder), labels)
    seg = pydicom.dcmread(out / "seg.dcm")
    assert "demo" in seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
