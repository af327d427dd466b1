"""The app's service without a browser: caches, re-filtering, uploads, and files equal to infer_sam.py's."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam3.app.service import AppService, Box, box_corners, parse_boxes, parse_prompts
from medsam3.cli.infer import main as infer_main
from medsam3.config import load_config
from medsam3.inference.predictor import Predictor


@pytest.fixture
def service(tiny_config, tmp_path) -> AppService:
    return AppService(Predictor.from_config(load_config(tiny_config), weights="none"), work_dir=tmp_path / "work")


def _same(a, b) -> None:
    assert [d.prompt for d in a] == [d.prompt for d in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.masks, y.masks)


def test_prompts_and_boxes_from_the_text_fields():
    assert parse_prompts(" liver, liver tumor;\nspleen,, liver ") == ["liver", "liver tumor", "spleen"]
    with pytest.raises(ValueError, match="at least one concept"):
        parse_prompts(" , ")
    assert parse_boxes("+ 1 2 30 40\n\n- 5,6,7,8\n9 9 20 20") == [
        Box(1, 2, 30, 40, True),
        Box(5, 6, 7, 8, False),
        Box(9, 9, 20, 20, True),
    ]
    with pytest.raises(ValueError, match=r"box line 1 .*x2 > x1"):
        parse_boxes("+ 30 2 1 40")
    with pytest.raises(ValueError, match="box line 2"):
        parse_boxes("1 2 3 4\n1 2 3")
    assert box_corners((50, 10), (20, 40), positive=False) == Box(20, 10, 50, 40, False)
    with pytest.raises(ValueError, match="corners"):
        box_corners((5, 5), (5, 40), True)


def test_embedding_and_outputs_are_cached_and_threshold_refilters_without_the_model(service, image_file, monkeypatch):
    predictor = service.predictor
    calls = {"encode": 0, "forward": 0}
    encode, forward = predictor.encode_images, predictor.forward_rows

    def counting_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def counting_forward(*a, **k):
        calls["forward"] += 1
        return forward(*a, **k)

    monkeypatch.setattr(predictor, "encode_images", counting_encode)
    monkeypatch.setattr(predictor, "forward_rows", counting_forward)
    upload = service.open(image_file)
    first = service.segment_image(upload, ["liver"], [], 0.5, 0.5)
    assert first.embed_seconds is not None and calls == {"encode": 1, "forward": 1}
    second = service.segment_image(upload, ["liver", "tumor"], [], 0.5, 0.5)
    assert second.embed_seconds is None and second.new_prompts == 1 and calls == {"encode": 1, "forward": 2}
    low = service.refilter(upload, second, 0.05, 0.3)
    assert calls == {"encode": 1, "forward": 2}  # no model pass for a new threshold
    # the same image uploaded again (another file, same pixels) shares the embedding
    again = service.open(image_file)
    service.segment_image(again, ["liver"], [Box(10, 10, 60, 50)], 0.5, 0.5)
    assert calls == {"encode": 1, "forward": 3}

    # What the re-filter gives is what the Predictor gives for that threshold from scratch.
    monkeypatch.undo()
    predictor.set_image(upload.loaded.image.rgb)
    _same(low.results, predictor.predict(["liver", "tumor"], threshold=0.05, nms_iou=0.3))
    assert sum(len(d) for d in low.results) > sum(len(d) for d in second.results)


def test_image_downloads_are_infer_sams_files(service, image_file, tmp_path, monkeypatch, tiny_config):
    upload = service.open(image_file)
    boxes = [Box(10, 10, 80, 70), Box(90, 50, 120, 80, positive=False)]
    result = service.segment_image(upload, ["liver", "tumor"], boxes, 0.1, 0.5)
    overlay, detections, *masks = service.write_image_outputs(upload, result)
    monkeypatch.chdir(tmp_path)
    code = infer_main(
        ["--config", str(tiny_config), "--image", "scan.png", "--prompt", "liver", "tumor", "--weights", "none"]
        + ["--threshold", "0.1", "--box", "10", "10", "80", "70", "--neg-box", "90", "50", "120", "80"]
        + ["--json", "cli.json", "--masks-dir", "cli_masks", "--output", "cli.png", "-q"]
    )
    assert code == 0
    assert overlay.read_bytes() == (tmp_path / "cli.png").read_bytes()
    assert detections.read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert [m.name for m in masks] == ["00_liver.png", "01_tumor.png"]
    for m in masks:
        assert m.read_bytes() == (tmp_path / "cli_masks" / m.name).read_bytes()
    rows = service.detection_rows(upload, result)
    assert {r[0] for r in rows} == {"liver", "tumor"} and all(r[4] is None for r in rows)  # PNG: no spacing


def test_volume_label_map_equals_infer_sams(service, tmp_path, tiny_config):
    data = np.zeros((30, 36, 5), np.float32)
    data[8:22, 10:28, 1:4] = 300
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 3.0, 1])), path)
    upload = service.open(path)
    assert upload.kind == "volume" and upload.n_slices == 5
    result = service.segment_volume(upload, ["liver"], [], 0.1, 0.5)
    assert [f.name for f in result.files] == ["labels.nii.gz", "legend.json", "montage.png"]
    code = infer_main(
        ["--config", str(tiny_config), "--image", str(path), "--prompt", "liver", "--weights", "none"]
        + ["--threshold", "0.1", "--output-dir", str(tmp_path / "cli"), "-q"]
    )
    assert code == 0
    ours, cli = nib.load(result.files[0]), nib.load(tmp_path / "cli" / "labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(cli.dataobj))
    np.testing.assert_array_equal(ours.affine, cli.affine)
    assert np.asarray(ours.dataobj).any()
    (row,) = service.volume_rows(result)
    assert row[0] == "liver" and row[4] == int((np.asarray(ours.dataobj) == 1).sum())
    assert row[5] == pytest.approx(row[4] * 0.7 * 0.7 * 3.0 / 1000, abs=1e-6)
    assert service.volume_overlay(upload, result, 2).size[0] > 0


def _dicom_series(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir()
    series = generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        path = folder / f"slice{k}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def test_zipped_dicom_series_opens_as_a_volume(service, tmp_path):
    paths = _dicom_series(tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, f"patient/series/{p.name}")
        zf.writestr("__MACOSX/patient/._slice0.dcm", b"resource fork")
    upload = service.open(archive)
    assert upload.kind == "volume" and upload.n_slices == 3 and upload.name == "series.zip"
    assert "soft_tissue" in upload.describe()

    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.write(paths[0], "slice.dcm")
    assert service.open(one).kind == "image"


def test_bad_uploads_say_what_is_wrong(service, tmp_path):
    fake_zip = tmp_path / "series.zip"
    fake_zip.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        service.open(fake_zip)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ValueError, match="holds no files"):
        service.open(empty)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 3, 2), np.float32), np.eye(4)), four_d)
    with pytest.raises(ValueError, match="no volume index"):
        service.open(four_d)
    assert service.open(four_d, volume_index=1).n_slices == 3


def test_zipped_dicom_series_downloads_include_seg_and_rtstruct(service, ct_series, tmp_path):
    """A DICOM upload's downloads hold seg.dcm and rtstruct.dcm, the CLI's files, referencing the upload."""
    pytest.importorskip("highdicom", reason="the DICOM SEG writer: pip install 'medsam3[dicom-out]'")
    folder, _, _ = ct_series()
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"ct/{p.name}")
    upload = service.open(archive)
    result = service.segment_volume(upload, ["liver", "left kidney"], [], threshold=0.0, nms_iou=0.5)
    names = {p.name for p in result.files}
    assert {"labels.nii.gz", "seg.dcm", "rtstruct.dcm"} <= names
    seg = pydicom.dcmread(next(p for p in result.files if p.name == "seg.dcm"))
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}
    refs = {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == sources
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "left kidney"]


def test_non_dicom_uploads_get_no_dicom_files(service, image_file):
    upload = service.open(image_file)
    result = service.segment_image(upload, ["liver"], [], threshold=0.0, nms_iou=0.5)
    files = service.write_image_outputs(upload, result)
    assert not any(p.suffix == ".dcm" for p in files)


def test_demo_weights_per_concept_thresholds_give_infer_sams_detections(tmp_path):
    """Weights recording a threshold per concept (the demo): per_concept=True scores each prompt at its own,
    as infer_sam.py without --threshold does (image and volume); off, the slider's value holds for all."""
    from medsam3.adapters.plan import plan_run
    from medsam3.inference.postprocess3d import largest_component_option
    from medsam3.inference.volume import segment_volume

    predictor = Predictor.from_plan(plan_run(load_config(None), "demo", device="cpu", check_hub=False))
    service = AppService(predictor, work_dir=tmp_path / "work")
    assert service.records_concept_thresholds
    examples = Path(__file__).resolve().parents[2] / "medsam3" / "demo" / "examples"
    prompts = ["liver", "spleen", "aorta", "left kidney", "right kidney", "stomach"]
    own = {p: predictor.plan.threshold_for(p) for p in prompts}
    assert len(set(own.values())) > 1  # the demo records thresholds of their own

    upload = service.open(examples / "ct_dicom_slice.dcm")
    per_concept = service.segment_image(upload, prompts, [], threshold=0.0, nms_iou=0.5, per_concept=True)
    predictor.set_image(upload.loaded.image.rgb)
    _same(per_concept.results, predictor.predict(prompts, nms_iou=0.5))  # infer_sam.py's detections
    assert per_concept.concept_thresholds == own and per_concept.threshold == predictor.plan.threshold
    slider = service.refilter(upload, per_concept, 0.0, 0.5, per_concept=False)
    assert sum(map(len, slider.results)) > sum(map(len, per_concept.results))  # 0.0 keeps more: it applies
    files = service.write_image_outputs(upload, per_concept)
    record = json.loads(next(p for p in files if p.name == "detections.json").read_text())
    assert record["concept_thresholds"] == own

    slab = service.open(examples / "ct_abdomen_slab.nii.gz")
    volume = service.segment_volume(slab, prompts[:2], [], threshold=0.0, nms_iou=0.5, per_concept=True)
    # infer_sam.py's: each prompt at its own threshold, the recorded clean-up (liver and spleen keep their
    # largest component)
    cleanup = largest_component_option(None, recorded=predictor.plan.largest_component)
    reference = segment_volume(
        predictor, slab.loaded.volume, prompts[:2], axis="auto", threshold=None, largest_component=cleanup
    )
    np.testing.assert_array_equal(volume.seg.labels, reference.labels)
    assert volume.legend["largest_component"] == ["liver", "spleen"]
    at_slider = service.segment_volume(slab, prompts[:2], [], threshold=0.0, nms_iou=0.5, per_concept=False)
    assert sum(at_slider.seg.detections) > sum(volume.seg.detections)  # the slider's 0.0: more detections
    assert volume.legend["concept_thresholds"] == {p: own[p] for p in prompts[:2]}  # legend.json records them
