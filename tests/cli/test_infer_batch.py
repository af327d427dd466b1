"""Batch inference: mixed inputs, failures reported and skipped, COCO results, summary, resume."""

from __future__ import annotations

import copy
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools.coco import COCO

from medsam3.inference.inputs import discover_inputs, output_names
from medsam3.inference.predictor import Predictor
from medsam3.outputs import decode_rle
from tests.conftest import run_cli

PROMPTS = ["liver", "tumor"]
CORRUPT = {"broken.png", "truncated.nii.gz"}


def _dicom_testfile(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


def _series(folder, n=3):
    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(_dicom_testfile("CT_small.dcm"))
    folder.mkdir()
    uid = generate_uid()
    for k in range(n):
        ds = copy.deepcopy(src)
        arr = src.pixel_array[:40, :32].astype(np.int16) + 10 * k
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.save_as(folder / f"slice{k}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """20 inputs: 9 PNG (RGB/gray), 3 16-bit TIFF, 3 DICOM, 2 NIfTI, 1 DICOM series, 2 corrupt."""
    d = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = 60 + 7 * i, 80 - 3 * i
        img = (rng.random((h, w, 3)) * 200).astype(np.uint8)
        img[10:30, 15:40] = 240
        Image.fromarray(img).save(d / f"rgb{i}.png")
    for i in range(3):
        Image.fromarray((rng.random((50, 70)) * 255).astype(np.uint8)).save(d / f"gray{i}.png")
    for i in range(3):
        tifffile.imwrite(d / f"scan{i}.tif", (rng.random((64, 48)) * 60000).astype(np.uint16))
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(d / "scan0.png")  # name clash with scan0.tif
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(_dicom_testfile(name), d / name)
    for i in range(2):
        data = rng.normal(0, 100, (24, 20, 3)).astype(np.float32)
        nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0 + i, 1.0])).to_filename(d / f"vol{i}.nii.gz")
    _series(d / "series")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    full = (d / "vol0.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    (d / "notes.txt").write_text("not an input")
    (d / "images_folder").mkdir()  # a folder without DICOM: not an input
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "images_folder" / "x.png")
    return d


def test_discovery_folder_glob_and_list(mixed_dir, tmp_path):
    found = discover_inputs(mixed_dir)
    assert len(found) == 20 and {p.name for p in found} >= CORRUPT | {"series", "CT_small.dcm"}
    assert not {"notes.txt", "images_folder"} & {p.name for p in found}
    names = output_names(found)
    assert len(set(names)) == 20 and "scan0" in names and "scan0_tif" in names
    assert [p.name for p in discover_inputs(str(mixed_dir / "rgb*.png"))] == [f"rgb{i}.png" for i in range(6)]
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two files\n{mixed_dir / 'gray0.png'}\n\nmissing.png\n")
    assert [p.name for p in discover_inputs(listing)] == ["gray0.png", "missing.png"]
    with pytest.raises(FileNotFoundError, match="no images or volumes"):
        discover_inputs(str(tmp_path / "*.png"))


@pytest.fixture(scope="module")
def batch_run(mixed_dir, tmp_path_factory):
    from medsam3.testing import build_tiny_checkpoint
    from tests.conftest import write_config

    root = tmp_path_factory.mktemp("batch")
    ckpt = build_tiny_checkpoint(root / "tiny")
    config = write_config(root / "tiny.yaml", ckpt, hardware={"device": "cpu"})
    out = root / "out"
    code = run_cli(
        "--config",
        config,
        "--input-dir",
        mixed_dir,
        "--output-dir",
        out,
        "--prompt",
        *PROMPTS,
        "--weights",
        "none",
        "--threshold",
        "0.1",
        "--binary-masks",
        "--montage",
        2,
        "-q",
    )
    return code, out, config


def test_batch_of_20_with_2_corrupt(batch_run, mixed_dir, capsys):
    code, out, _ = batch_run
    assert code == 1
    failures = json.loads((out / "failures.json").read_text())
    assert failures["total"] == 20 and failures["failed"] == 2
    assert {p.split("/")[-1] for p in (f["file"] for f in failures["failures"])} == CORRUPT
    assert all("Cannot read" in f["error"] for f in failures["failures"])

    done_2d = sorted(p.parent.name for p in out.glob("*/detections.json"))
    done_3d = sorted(p.parent.name for p in out.glob("*/legend.json"))
    assert len(done_2d) == 15 and done_3d == ["series", "vol0", "vol1"]
    assert not (out / "broken").exists() and not (out / "truncated").exists()
    assert (out / "series" / "image.nii.gz").is_file()  # DICOM in, NIfTI out
    assert (out / "rgb0" / "overlay.png").is_file() and (out / "rgb0" / "masks" / "01_tumor.png").is_file()

    # COCO results load with pycocotools and match each input's own detections.json
    gt = COCO(str(out / "coco_images.json"))
    res = gt.loadRes(str(out / "coco_results.json"))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == PROMPTS
    assert len(gt.getImgIds()) == 15
    for img in gt.loadImgs(gt.getImgIds()):
        anns = res.loadAnns(res.getAnnIds(imgIds=[img["id"]]))
        assert all(res.annToMask(a).shape == (img["height"], img["width"]) for a in anns)
    total = sum(
        p["num_detections"] for f in out.glob("*/detections.json") for p in json.loads(f.read_text())["prompts"]
    )
    assert total > 0 and len(res.getAnnIds()) == total

    # summary.csv: one row per input and prompt, numbers equal to the outputs on disk
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 * len(PROMPTS) + 2
    assert sorted(r["file"].split("/")[-1] for r in rows if r["status"] == "failed") == sorted(CORRUPT)
    by_key = {(r["file"].split("/")[-1], r["prompt"]): r for r in rows if r["status"] == "ok"}
    det = json.loads((out / "rgb2" / "detections.json").read_text())
    for k, entry in enumerate(det["prompts"]):
        union = np.zeros((det["height"], det["width"]), bool)
        for d in entry["detections"]:
            union |= decode_rle(d["mask"])
        row = by_key[("rgb2.png", entry["prompt"])]
        assert int(row["area_px"]) == int(union.sum()) and int(row["detections"]) == entry["num_detections"]
        png = np.asarray(Image.open(out / "rgb2" / "masks" / f"{k:02d}_{entry['prompt']}.png")) > 0
        np.testing.assert_array_equal(png, union)
    labels = np.asarray(nib.load(out / "vol1" / "labels.nii.gz").dataobj)
    binary = np.asarray(nib.load(out / "vol1" / "masks" / "01_tumor.nii.gz").dataobj).astype(bool)
    row = by_key[("vol1.nii.gz", "tumor")]
    # voxels/volume: what labels.nii.gz holds for the value; prompt_mask_*: the prompt's own binary mask
    assert int(row["voxels"]) == int((labels == 2).sum())
    assert float(row["volume_ml"]) == pytest.approx((labels == 2).sum() * 0.8 * 0.8 * 4.0 / 1000, rel=1e-5)
    assert int(row["prompt_mask_voxels"]) == int(binary.sum())
    assert float(row["prompt_mask_volume_ml"]) == pytest.approx(binary.sum() * 0.8 * 0.8 * 4.0 / 1000, rel=1e-5)
    assert labels.shape == (24, 20, 3) and set(np.unique(labels)) <= {0, 1, 2}


def test_skip_existing_resumes_and_keeps_everything(batch_run, mixed_dir, monkeypatch):
    _, out, config = batch_run
    before_rows = _rows(out)
    before_res = json.loads((out / "coco_results.json").read_text())
    calls = []
    real = Predictor.encode_images
    monkeypatch.setattr(Predictor, "encode_images", lambda self, ims: calls.append(len(ims)) or real(self, ims))
    # an interrupted batch: one input lost its completion marker (and its summary row)
    (out / "gray1" / "detections.json").unlink()
    assert (
        run_cli(
            "--config",
            config,
            "--input-dir",
            mixed_dir,
            "--output-dir",
            out,
            "--prompt",
            *PROMPTS,
            "--weights",
            "none",
            "--threshold",
            "0.1",
            "--binary-masks",
            "--montage",
            2,
            "--skip-existing",
            "-q",
        )
        == 1
    )  # the 2 corrupt files still fail
    assert calls == [1], "only the input without its marker ran through the model"
    after = _rows(out)
    assert _strip(after) == _strip(before_rows)
    assert json.loads((out / "coco_results.json").read_text()) == before_res


def test_interrupted_batch_keeps_finished_outputs(tiny_config, mixed_dir, tmp_path, monkeypatch):
    from medsam3.inference import batch

    out = tmp_path / "out"
    real = batch.process_image
    seen = []

    def interrupt_on_third(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "process_image", interrupt_on_third)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(mixed_dir / f"rgb{i}.png") for i in range(5)))
    args = [
        "--config",
        tiny_config,
        "--input-dir",
        listing,
        "--output-dir",
        out,
        "--prompt",
        "liver",
        "--weights",
        "none",
        "--threshold",
        "0.1",
        "-q",
    ]
    assert run_cli(*args) == 130
    assert sorted(p.parent.name for p in out.glob("*/detections.json")) == ["rgb0", "rgb1"]
    assert len(_rows(out)) == 2 and len(COCO(str(out / "coco_images.json")).getImgIds()) == 2
    monkeypatch.setattr(batch, "process_image", real)
    assert run_cli(*args, "--skip-existing") == 0
    assert len(_rows(out)) == 5 and len(COCO(str(out / "coco_images.json")).getImgIds()) == 5


def _rows(out):
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _strip(rows):
    return sorted(tuple((k, v) for k, v in r.items() if k != "seconds") for r in rows)


def test_batch_flag_errors(tiny_config, mixed_dir, tmp_path, capsys):
    assert run_cli("--config", tiny_config, "--input-dir", mixed_dir, "--prompt", "liver") == 2
    assert "needs --output-dir" in capsys.readouterr().err
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--input-dir",
            tmp_path / "nothing",
            "--output-dir",
            tmp_path / "o",
            "--prompt",
            "liver",
            "--weights",
            "none",
        )
        == 2
    )
    assert "no such folder" in capsys.readouterr().err
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--image",
            mixed_dir / "vol0.nii.gz",
            "--prompt",
            "liver",
            "--json",
            tmp_path / "x.json",
            "--weights",
            "none",
        )
        == 2
    )
    assert "--output-dir" in capsys.readouterr().err
    assert (
        run_cli(
            "--config", tiny_config, "--image", mixed_dir / "rgb0.png", "--prompt", "liver", "--window", "40", "wide"
        )
        == 2
    )
    assert "two numbers" in capsys.readouterr().err
