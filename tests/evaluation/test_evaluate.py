"""scripts/evaluate.py end to end on tiny generated 2D (COCO) and 3D (NIfTI) sets, tiny random SAM3."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from medsam3.config import load_config
from medsam3.evaluation import protocol as ev
from medsam3.evaluation.metrics import compute_all, summarize
from medsam3.inference.postprocess import Detections
from medsam3.inference.predictor import Predictor
from tests.conftest import REPO
from tests.evaluation.conftest import BIG, BIG_BOX, LABEL_PROMPTS, SIZE, SMALL, make_coco, make_volume, run_evaluate

# pycocotools' decode under numpy 2 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def data(tmp_path):
    coco = make_coco(tmp_path / "coco")
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    make_volume(images, labels)
    prompts = tmp_path / "labels.json"
    prompts.write_text(json.dumps(LABEL_PROMPTS))
    return {"coco": coco, "data_dir": tmp_path / "coco", "images": images, "labels": labels, "prompts": prompts}


def read_rows(out: Path) -> list[dict]:
    with open(out / "per_case.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ recompute
def _coco_gt(ann_file: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    by_name = {img["file_name"]: img["id"] for img in coco.dataset["images"]}

    def gt(file_name: str, category_id: int) -> np.ndarray:
        img_id = by_name[file_name]
        info = coco.imgs[img_id]
        out = np.zeros((info["height"], info["width"]), bool)
        for a in coco.imgToAnns[img_id]:
            if a["category_id"] == category_id:
                out |= coco.annToMask(a).astype(bool)
        return out

    return gt


def recompute(out: Path, row: dict, coco_gt) -> dict:
    """Metrics from the saved prediction and the ground truth files only."""
    pred_path = out / row["prediction"]
    if row["category_id"]:
        pred = np.asarray(Image.open(pred_path)) > 0
        gt = coco_gt(row["case_id"], int(row["category_id"]))
        spacing = (1.0, 1.0)
    else:
        pred_img = nib.load(pred_path)
        pred = np.asarray(pred_img.dataobj) > 0
        lab_img = nib.load(Path(row["image"]).parent.parent / "labelsTs" / f"{row['case_id']}.nii.gz")
        gt = np.asarray(lab_img.dataobj) == int(row["label"])
        spacing = tuple(float(z) for z in lab_img.header.get_zooms()[:3])
        np.testing.assert_allclose(pred_img.affine, lab_img.affine, atol=1e-5)
    return {
        **compute_all(pred, gt, spacing=spacing, tolerance_mm=2.0),
        "gt_size_px": int(gt.sum()),
        "pred_size_px": int(pred.sum()),
    }


def assert_metrics_equal(row: dict, expected: dict) -> None:
    for key in ("dice", "iou", "nsd", "hd95"):
        got = float(row[key])
        assert (math.isinf(got) and math.isinf(expected[key])) or got == pytest.approx(expected[key], abs=1e-12), key
    assert int(row["gt_size_px"]) == expected["gt_size_px"]
    assert int(row["pred_size_px"]) == expected["pred_size_px"]


# ------------------------------------------------------------------------------------------ tests
def test_largest_component_box():
    mask = BIG | SMALL
    assert ev.largest_component_box(mask).tolist() == BIG_BOX
    one = np.zeros((5, 7), bool)
    one[2, 3] = True
    assert ev.largest_component_box(one).tolist() == [3.0, 2.0, 4.0, 3.0]
    assert ev.largest_component_box(np.zeros((4, 4), bool)) is None


def test_end_to_end_2d_and_3d_reports_match_saved_predictions(tmp_path, tiny_config, data):
    out = tmp_path / "eval"
    code = run_evaluate(
        tiny_config,
        "--data-dir",
        data["data_dir"],
        "--split",
        "test",
        "--image-dir",
        data["images"],
        "--label-dir",
        data["labels"],
        "--label-prompts",
        data["prompts"],
        "--protocol",
        "text",
        "text+box",
        "--thresholds",
        "0.0",
        "--nms-iou",
        "1",
        "--include-absent",
        "--slice-batch",
        "3",
        "--output-dir",
        out,
        "--figure",
    )
    assert code == 0
    rows = read_rows(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == [] and summary["n_cases"] == 4 and summary["n_evaluated"] == 4

    # 2D: 3 images x 2 concepts (kidney absent on c.png, included by --include-absent); 3D: 2 labels
    two_d = [r for r in rows if r["modality"] == "2D"]
    three_d = [r for r in rows if r["modality"] != "2D"]
    assert len(two_d) == 3 * 2 * 2 and len(three_d) == 2 * 2
    assert {r["concept"] for r in two_d} == {"liver", "left kidney"}  # 'prompt' overrides 'name'; no 'organs'
    assert {r["concept"] for r in three_d} == {"liver", "spleen"}
    absent = [r for r in two_d if r["case_id"] == "c.png" and r["concept"] == "left kidney"]
    assert len(absent) == 2 and all(r["present"] == "0" for r in absent)

    coco_gt = _coco_gt(data["coco"])
    groups = defaultdict(list)
    for row in rows:
        expected = recompute(out, row, coco_gt)
        assert_metrics_equal(row, expected)
        groups[(row["modality"], row["concept"], row["protocol"], float(row["threshold"]))].append(
            {**expected, "present": row["present"] == "1"}
        )
    assert any(int(r["pred_size_px"]) > 0 for r in rows), "the test needs some non-empty predictions"

    results = summary["results"]
    assert len(results) == len(groups)
    for entry in results:
        exp = groups[(entry["modality"], entry["concept"], entry["protocol"], entry["threshold"])]
        assert entry["n_cases"] == len(exp)
        # means over the cases where the concept is present; absent ones give the false-positive rate
        absent = [e for e in exp if not e["present"]]
        fpr = sum(e["pred_size_px"] > 0 for e in absent) / len(absent) if absent else None
        assert entry["false_positive_rate"] == fpr
        for metric in ("dice", "iou", "nsd", "hd95"):
            s = summarize(e[metric] for e in exp if e["present"])
            assert entry[metric]["n"] == s["n"] and entry[metric]["n_inf"] == s["n_inf"]
            if s["n"]:
                assert entry[metric]["mean"] == pytest.approx(s["mean"], abs=1e-12)
                assert entry[metric]["std"] == pytest.approx(s["std"], abs=1e-12)
    # the figure needs matplotlib: written when it is installed, otherwise skipped with a message
    try:
        import matplotlib  # noqa: F401

        assert (out / "dice_per_concept.png").is_file()
    except ImportError:
        assert not (out / "dice_per_concept.png").exists()


def test_3d_text_predictions_equal_the_predictors_slice_batches(tmp_path, tiny_config, data):
    """The evaluator's batched rows + reassembly give what Predictor.predict_images + labels_from_slices give."""
    out = tmp_path / "eval"
    assert (
        run_evaluate(
            tiny_config,
            "--image-dir",
            data["images"],
            "--label-dir",
            data["labels"],
            "--label-prompts",
            data["prompts"],
            "--thresholds",
            "0.2",
            "--output-dir",
            out,
        )
        == 0
    )
    from medsam3.io import load_volume

    volume = load_volume(data["images"] / "case1_0000.nii.gz")
    predictor = Predictor.from_config(load_config(tiny_config), weights="none")
    slices = list(volume.slices_rgb())
    dets = predictor.predict_images(slices, ["liver", "spleen"], threshold=0.2, nms_iou=0.5)
    for k, prompt in enumerate(["liver", "spleen"]):
        expected = volume.labels_from_slices([d[k].semantic_mask() for d in dets]) > 0
        saved = np.asarray(nib.load(out / "predictions" / "text" / "t0.2" / "case1" / f"{prompt}.nii.gz").dataobj)
        np.testing.assert_array_equal(saved > 0, expected)


def _spy_rows(monkeypatch) -> list[tuple[list[str], list]]:
    calls = []
    original = Predictor.forward_rows

    def spy(self, vision, image_index, prompts, rows_boxes, sizes):
        calls.append(
            (list(image_index), list(prompts), [b.copy() for b, _ in rows_boxes], [lab.copy() for _, lab in rows_boxes])
        )
        return original(self, vision, image_index, prompts, rows_boxes, sizes)

    monkeypatch.setattr(Predictor, "forward_rows", spy)
    return calls


def test_text_box_protocol_passes_the_largest_component_box_2d(tmp_path, tiny_config, data, monkeypatch):
    calls = _spy_rows(monkeypatch)
    ann = json.loads(data["coco"].read_text())
    ann["images"] = [im for im in ann["images"] if im["file_name"] == "a.png"]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] == 1 and a["category_id"] == 1]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(ann))
    out = tmp_path / "eval"
    assert (
        run_evaluate(
            tiny_config,
            "--coco",
            one,
            "--image-root",
            data["coco"].parent,
            "--protocol",
            "text",
            "text+box",
            "--output-dir",
            out,
        )
        == 0
    )
    ((_, prompts, boxes, labels),) = calls  # one batched pass: text row, then text+box row
    assert prompts == ["liver", "liver"]
    assert boxes[0].shape == (0, 4)
    assert boxes[1].tolist() == [BIG_BOX] and labels[1].tolist() == [1]


def test_text_box_protocol_passes_the_largest_component_box_per_slice_3d(tmp_path, tiny_config, data, monkeypatch):
    calls = _spy_rows(monkeypatch)
    out = tmp_path / "eval"
    assert (
        run_evaluate(
            tiny_config,
            "--image-dir",
            data["images"],
            "--label-dir",
            data["labels"],
            "--label-prompts",
            data["prompts"],
            "--protocol",
            "text+box",
            "--slice-batch",
            "8",
            "--output-dir",
            out,
        )
        == 0
    )
    from medsam3.io import load_volume

    volume = load_volume(data["images"] / "case1_0000.nii.gz")
    geo = volume.slice_geometry()
    labels = np.asarray(nib.load(data["labels"] / "case1.nii.gz").dataobj)
    seen = {}
    for image_index, prompts, boxes, _ in calls:
        for i, p, b in zip(image_index, prompts, boxes):
            seen[(i, p)] = b
    assert len(seen) == 8 * 2
    for k in range(8):
        for value, prompt in ((1, "liver"), (2, "spleen")):
            box = seen[(k, prompt)]
            if not (labels[..., k] == value).any():
                assert box.shape == (0, 4), f"slice {k} {prompt}: empty ground truth gets text only"
                continue
            # expected: the bounding box, in display pixels, of the big block only (not the small one)
            big = np.zeros_like(labels[..., k], dtype=bool)
            if value == 1:
                big[10:40, 15:35] = True
            else:
                big[40:60, 5:20] = True
            rows, cols = np.nonzero(geo.to_display(big))
            assert box.tolist() == [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], (k, prompt)


def test_threshold_sweep_runs_the_model_once_and_agrees_with_separate_runs(tmp_path, tiny_config, data, monkeypatch):
    thresholds = ["0", "0.25", "0.9"]
    encodes = []
    original = Predictor.encode_images
    monkeypatch.setattr(
        Predictor, "encode_images", lambda self, images: encodes.append(len(images)) or original(self, images)
    )
    common = ["--data-dir", data["data_dir"], "--protocol", "text", "text+box", "--nms-iou", "1"]
    sweep = tmp_path / "sweep"
    assert run_evaluate(tiny_config, *common, "--thresholds", *thresholds, "--output-dir", sweep) == 0
    assert encodes == [1, 1, 1], "one vision pass per image for all thresholds and protocols"
    sweep_rows = {(r["case_id"], r["concept"], r["protocol"], float(r["threshold"])): r for r in read_rows(sweep)}

    dice_by = defaultdict(lambda: defaultdict(list))
    for t in thresholds:
        single = tmp_path / f"single_{t}"
        assert run_evaluate(tiny_config, *common, "--thresholds", t, "--output-dir", single) == 0
        for r in read_rows(single):
            s = sweep_rows[(r["case_id"], r["concept"], r["protocol"], float(t))]
            for key in ("dice", "iou", "nsd", "hd95", "pred_size_px"):
                assert s[key] == r[key], (t, key)
            np.testing.assert_array_equal(
                np.asarray(Image.open(sweep / s["prediction"])), np.asarray(Image.open(single / r["prediction"]))
            )
            dice_by[(r["concept"], r["protocol"])][float(t)].append(float(r["dice"]))
    # the thresholds must make a difference for the test to mean something
    assert any(len({np.mean(v) for v in per_t.values()}) > 1 for per_t in dice_by.values())

    best = json.loads((sweep / "summary.json").read_text())["best_thresholds"]
    assert {(b["concept"], b["protocol"]) for b in best} == set(dice_by)
    for b in best:
        means = {t: float(np.mean(v)) for t, v in dice_by[(b["concept"], b["protocol"])].items()}
        top = max(means.values())
        assert b["threshold"] == min(t for t, m in means.items() if m == top)
        assert b["dice_mean"] == pytest.approx(top)


def test_failing_cases_are_reported_and_not_fatal(tmp_path, tiny_config, capsys):
    make_coco(tmp_path / "coco", corrupt=True)
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    make_volume(images, labels, "good")
    make_volume(images, labels, "mismatch", label_shape=(SIZE, SIZE, 5))
    (images / "nolabel.nii.gz").write_bytes((images / "good_0000.nii.gz").read_bytes())
    prompts = tmp_path / "labels.json"
    prompts.write_text(json.dumps(LABEL_PROMPTS))
    out = tmp_path / "eval"
    code = run_evaluate(
        tiny_config,
        "--data-dir",
        tmp_path / "coco",
        "--image-dir",
        images,
        "--label-dir",
        labels,
        "--label-prompts",
        prompts,
        "--slice-batch",
        "4",
        "--output-dir",
        out,
    )
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    failures = {f["case"]: f["reason"] for f in summary["failures"]}
    assert set(failures) == {"broken.png", "mismatch", "nolabel"}
    assert "broken.png" in failures["broken.png"]
    assert "shape (64, 64, 5)" in failures["mismatch"] and "(64, 64, 8)" in failures["mismatch"]
    assert "no label map" in failures["nolabel"]
    assert summary["n_cases"] == 7 and summary["n_evaluated"] == 4
    assert {r["case_id"] for r in read_rows(out)} == {"a.png", "b.png", "c.png", "good"}
    assert "3 case(s) failed" in capsys.readouterr().out


def test_perfect_predictions_give_dice_1_and_coco_ap_1(tmp_path, tiny_config, data, monkeypatch):
    """The report plumbing (GT union, COCO results, COCOeval) on a predictor that returns the GT instances."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(data["coco"]))
    by_name = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    prompt_to_cat = {"liver": 1, "left kidney": 2}
    current = {}

    def fake_predict_rows(predictor, images, rows, threshold, nms_iou):
        img_id = current["id"]
        out = []
        for _, prompt, _ in rows:
            anns = [a for a in coco.imgToAnns[img_id] if a["category_id"] == prompt_to_cat[prompt]]
            masks = (
                np.stack([coco.annToMask(a).astype(bool) for a in anns]) if anns else np.zeros((0, SIZE, SIZE), bool)
            )
            out.append(
                Detections(
                    prompt,
                    np.zeros((len(anns), 4), np.float32),
                    np.linspace(0.99, 0.9, len(anns)).astype(np.float32),
                    masks,
                )
            )
        return out

    original = ev.Evaluator.evaluate_image

    def track(self, case, dataset):
        current["id"] = by_name[case.case_id]
        return original(self, case, dataset)

    monkeypatch.setattr(ev, "_predict_rows", fake_predict_rows)
    monkeypatch.setattr(ev.Evaluator, "evaluate_image", track)
    out = tmp_path / "eval"
    assert run_evaluate(tiny_config, "--data-dir", data["data_dir"], "--coco-map", "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all(r["dice"]["mean"] == 1.0 and r["nsd"]["mean"] == 1.0 for r in summary["results"])
    cmap = summary["coco_map"]["text"]
    assert cmap["AP"] == pytest.approx(1.0) and cmap["AP50"] == pytest.approx(1.0)
    assert set(cmap["per_concept"]) == {"liver", "left kidney"}


def test_volume_pairs_csv_and_label_map_checks(tmp_path, tiny_config, data):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,label,modality\nimagesTs/case1_0000.nii.gz,labelsTs/case1.nii.gz,CT\n")
    out = tmp_path / "eval"
    assert run_evaluate(tiny_config, "--volumes", pairs, "--label-prompts", data["prompts"], "--output-dir", out) == 0
    rows = read_rows(out)
    assert {(r["case_id"], r["modality"], r["concept"]) for r in rows} == {
        ("case1", "CT", "liver"),
        ("case1", "CT", "spleen"),
    }
    assert rows[0]["spacing_mm"] == "0.8 0.9 2.5"
    assert float(rows[0]["gt_size_mm"]) == pytest.approx(int(rows[0]["gt_size_px"]) * 0.8 * 0.9 * 2.5)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to evaluate"),
        (["--coco", "missing.json"], "not found"),
        (["--image-dir", "{images}", "--label-dir", "{labels}"], "--label-prompts"),
        (["--data-dir", "{data_dir}", "--thresholds", "1.5"], "thresholds must be in [0, 1]"),
        (["--data-dir", "{data_dir}", "--nsd-tolerance", "0"], "NSD tolerance"),
        (["--data-dir", "{data_dir}", "--set", "lora.rnak=3"], "did you mean 'lora.rank'"),
        (["--image-dir", "{images}", "--label-dir", "{labels}", "--label-prompts", "{bad_prompts}"], "not an integer"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, tiny_config, data, capsys, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("liver: 1\n")
    fill = {"images": data["images"], "labels": data["labels"], "data_dir": data["data_dir"], "bad_prompts": bad}
    assert run_evaluate(tiny_config, *[a.format(**fill) for a in args], "--output-dir", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate.py: error: ") and message in err and "\n" not in err


def test_script_wrapper_help():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--protocol" in res.stdout and "text+box" in res.stdout


def test_3d_largest_component_is_what_gets_scored(tmp_path, tiny_config, data):
    """--largest-component (every concept) on a volume set: each saved prediction is the largest
    26-connected component of the raw one (scipy, independently), and the metrics are the cleaned volume's."""
    from scipy import ndimage

    common = ["--image-dir", data["images"], "--label-dir", data["labels"], "--label-prompts", data["prompts"]]
    common += ["--thresholds", "0.1", "0.3", "0.5", "0.6", "--nms-iou", "1"]
    raw_out, lcc_out = tmp_path / "raw", tmp_path / "lcc"
    assert run_evaluate(tiny_config, *common, "--output-dir", raw_out) == 0
    assert run_evaluate(tiny_config, *common, "--largest-component", "--output-dir", lcc_out) == 0
    raw_rows, lcc_rows = read_rows(raw_out), read_rows(lcc_out)
    assert len(raw_rows) == len(lcc_rows) > 0
    changed = 0
    for raw, row in zip(raw_rows, lcc_rows):
        assert (raw["case_id"], raw["concept"], raw["threshold"]) == (row["case_id"], row["concept"], row["threshold"])
        before = np.asarray(nib.load(raw_out / raw["prediction"]).dataobj) > 0
        labels, n = ndimage.label(before, structure=np.ones((3, 3, 3)))
        expected = labels == 1 + int(np.argmax(ndimage.sum(before, labels, range(1, n + 1)))) if n > 1 else before
        np.testing.assert_array_equal(np.asarray(nib.load(lcc_out / row["prediction"]).dataobj) > 0, expected)
        assert_metrics_equal(row, recompute(lcc_out, row, None))
        changed += n > 1
    assert changed, "no raw prediction had a second component: the test has no teeth"
    assert json.loads((lcc_out / "summary.json").read_text())["options"]["largest_component"] is True
