"""medsam3-evaluate on an nnU-Net dataset folder: per-case Dice equals a hand computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam3.cli.evaluate import main
from medsam3.cli.import_dataset import main as import_main

AFFINE = np.array([[-0.9, 0, 0, 10.0], [0, 0.8, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
LABELS = {"background": 0, "liver": 1, "tumor": 2, "liver and tumor": [1, 2]}


def _dataset(root: Path, n_cases: int = 3, bad_case: str | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        name = f"LIV_{i:03d}"
        image = rng.normal(100, 20, size=(24, 20, 3)).astype(np.float32)
        lab = np.zeros(image.shape, np.uint8)
        lab[4 + i : 14, 3:12, 0:2] = 1
        lab[8:11, 5:8, 1] = 2
        image[lab > 0] += 80
        if name == bad_case:
            lab[0, 0, 0] = 9  # a value dataset.json does not name
        nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"{name}.nii.gz")
    meta = {"channel_names": {"0": "MR"}, "labels": LABELS, "file_ending": ".nii.gz", "name": "Liver"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _rows(out: Path) -> list[dict]:
    with open(out / "per_case.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _hand_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def test_per_case_dice_equals_hand_computation(tmp_path, tiny_config, capsys):
    src = _dataset(tmp_path / "Dataset910_Liver", bad_case="LIV_002")
    out = tmp_path / "eval"
    args = ["--config", str(tiny_config), "--weights", "none", "-q", "--thresholds", "0.0", "--output-dir", str(out)]
    rc = main([*args, "--dataset", str(src)])
    assert rc == 1  # LIV_002 fails (unknown label value), the others count
    summary = json.loads((out / "summary.json").read_text())
    assert [f["case"] for f in summary["failures"]] == ["LIV_002"]
    assert "label value(s) [9]" in summary["failures"][0]["reason"]
    rows = _rows(out)
    assert {(r["case_id"], r["concept"]) for r in rows} == {
        (c, k) for c in ("LIV_000", "LIV_001") for k in ("liver", "tumor", "liver and tumor")
    }
    values = {k: v if isinstance(v, list) else [v] for k, v in LABELS.items()}
    dices = set()
    for row in rows:
        labels = np.asarray(nib.load(src / "labelsTr" / f"{row['case_id']}.nii.gz").dataobj)
        gt = np.isin(labels, values[row["concept"]])  # a region is the union of its values
        pred_img = nib.load(out / row["prediction"])
        np.testing.assert_allclose(pred_img.affine, AFFINE)
        pred = np.asarray(pred_img.dataobj) > 0
        assert int(row["gt_size_px"]) == int(gt.sum()) and int(row["pred_size_px"]) == int(pred.sum())
        assert float(row["dice"]) == pytest.approx(_hand_dice(pred, gt), abs=1e-12)
        dices.add(round(float(row["dice"]), 6))
    assert len(dices) > 1  # the predictions are not all empty or all equal: the check has teeth
    capsys.readouterr()


def test_a_sweep_is_one_model_pass_with_infer_sams_masks(tmp_path, tiny_config, capsys, monkeypatch):
    """Every swept threshold comes from one pass over the case, and each saved prediction is the mask
    segment_volume (what infer_sam.py runs) gives at that threshold."""
    from medsam3.config import load_config
    from medsam3.inference.predictor import Predictor
    from medsam3.inference.volume import segment_volume
    from medsam3.io import load_volume

    src = _dataset(tmp_path / "Dataset915_Liver", n_cases=1)
    out = tmp_path / "eval"
    passes = []
    encode = Predictor.encode_images
    monkeypatch.setattr(
        Predictor, "encode_images", lambda self, images: passes.append(len(images)) or encode(self, images)
    )
    argv = ["--config", str(tiny_config), "--weights", "none", "-q", "--dataset", str(src), "--slice-batch", "1"]
    assert main([*argv, "--thresholds", "0.02", "0.2", "0.3", "--output-dir", str(out)]) == 0
    assert passes == [1, 1, 1]  # one vision pass per slice (3 slices), not one per threshold
    rows = _rows(out)
    assert {r["threshold"] for r in rows} == {"0.02", "0.2", "0.3"}
    predictor = Predictor.from_config(load_config(tiny_config), weights="none")
    volume = load_volume(src / "imagesTr" / "LIV_000_0000.nii.gz")
    sizes = set()
    for t in (0.02, 0.2, 0.3):
        prompts = ["liver", "tumor", "liver and tumor"]
        seg = segment_volume(predictor, volume, prompts, threshold=t, slice_batch=1)
        for prompt, mask in zip(prompts, seg.masks):
            (row,) = [r for r in rows if r["concept"] == prompt and float(r["threshold"]) == t]
            np.testing.assert_array_equal(np.asarray(nib.load(out / row["prediction"]).dataobj) > 0, mask)
            sizes.add(int(mask.sum()))
    assert len(sizes) > 1  # thresholds inside the tiny model's score range: masks differ
    capsys.readouterr()


def test_cases_from_an_import_manifest(tmp_path, tiny_config, capsys):
    src = _dataset(tmp_path / "Dataset911_Liver", n_cases=4)
    imported = tmp_path / "imported"
    assert import_main([str(src), str(imported), "--concept", "liver=hepar", "--test-fraction", "0.25", "-q"]) == 0
    test_cases = json.loads((imported / "manifest.json").read_text())["splits"]["test"]
    out = tmp_path / "eval"
    rc = main(
        ["--config", str(tiny_config), "--weights", "none", "-q", "--data-dir", str(src),
         "--cases", f"{imported / 'manifest.json'}:test", "--output-dir", str(out)]
    )  # fmt: skip
    assert rc == 0
    rows = _rows(out)
    assert sorted({r["case_id"] for r in rows}) == sorted(test_cases)
    assert {r["concept"] for r in rows} == {"hepar", "tumor", "liver and tumor"}  # the manifest's names
    assert main(["--weights", "none", "-q", "--dataset", str(src), "--cases", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.txt" in err


def test_2d_png_folder_dice_equals_hand_computation(tmp_path, tiny_config, capsys):
    from PIL import Image

    root = tmp_path / "Dataset912_Skin"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        rgb = rng.integers(0, 120, size=(40, 50, 3), dtype=np.uint8)
        lab = np.zeros((40, 50), np.uint8)
        lab[10 + i : 25, 12:30] = 1
        rgb[lab == 1] = (200, 120, 90)
        Image.fromarray(rgb).save(root / "imagesTr" / f"SK_{i}_0000.png")
        Image.fromarray(lab).save(root / "labelsTr" / f"SK_{i}.png")
    meta = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "eval"
    args = ["--config", str(tiny_config), "--weights", "none", "-q", "--thresholds", "0.0", "--output-dir", str(out)]
    assert main([*args, "--data-dir", str(root)]) == 0  # a --data-dir holding dataset.json is a dataset folder
    rows = _rows(out)
    assert sorted(r["case_id"] for r in rows) == ["SK_0", "SK_1"]
    for row in rows:
        gt = np.asarray(Image.open(root / "labelsTr" / f"{row['case_id']}.png")) == 1
        pred = np.asarray(Image.open(out / row["prediction"])) > 0
        assert float(row["dice"]) == pytest.approx(_hand_dice(pred, gt), abs=1e-12)
    capsys.readouterr()


def test_backend_flags_are_refused_before_the_model_loads(tmp_path, tiny_config, capsys):
    """medsam3-evaluate takes infer_sam.py's --backend/--onnx-dir/--precision, refused in one line alike."""
    src = _dataset(tmp_path / "Dataset911_Liver", n_cases=1)
    base = ["--config", str(tiny_config), "--weights", "none", "-q", "--dataset", str(src)]
    cases = {
        "int8 without onnxruntime": (["--precision", "int8"], "add --backend onnxruntime"),
        "onnxruntime without a folder": (["--backend", "onnxruntime"], "needs --onnx-dir DIR"),
        "a folder that is no export": (["--backend", "onnxruntime", "--onnx-dir", str(src)], "not a medsam3 ONNX"),
    }
    for name, (extra, message) in cases.items():
        capsys.readouterr()
        assert main([*base, *extra, "--output-dir", str(tmp_path / "out")]) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "out" / "summary.json").exists()


def _largest_26(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component, straight from scipy (independent of medsam3.inference.postprocess3d)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def test_largest_component_cleans_the_named_concepts_only(tmp_path, tiny_config, capsys):
    """--largest-component liver: each saved liver volume is the largest component of the raw one and
    is what Dice is computed on; tumor's are untouched (what infer_sam.py --largest-component liver writes)."""
    src = _dataset(tmp_path / "Dataset912_Liver", n_cases=2)
    sweep = ["--thresholds", "0.1", "0.3", "0.5", "0.6"]
    base = ["--config", str(tiny_config), "--weights", "none", "-q", "--dataset", str(src), *sweep]
    raw_out, lcc_out = tmp_path / "raw", tmp_path / "lcc"
    assert main([*base, "--output-dir", str(raw_out)]) == 0
    assert main([*base, "--largest-component", "Liver", "--output-dir", str(lcc_out)]) == 0
    raw_rows, lcc_rows = _rows(raw_out), _rows(lcc_out)
    assert [(r["case_id"], r["concept"], r["threshold"]) for r in raw_rows] == [
        (r["case_id"], r["concept"], r["threshold"]) for r in lcc_rows
    ]
    split = 0
    for raw, row in zip(raw_rows, lcc_rows):
        before = np.asarray(nib.load(raw_out / raw["prediction"]).dataobj) > 0
        after = np.asarray(nib.load(lcc_out / row["prediction"]).dataobj) > 0
        expected = _largest_26(before) if row["concept"] == "liver" else before
        np.testing.assert_array_equal(after, expected)
        split += row["concept"] == "liver" and not np.array_equal(after, before)
        labels = np.asarray(nib.load(src / "labelsTr" / f"{row['case_id']}.nii.gz").dataobj)
        gt = np.isin(
            labels, LABELS[row["concept"]] if isinstance(LABELS[row["concept"]], list) else [LABELS[row["concept"]]]
        )
        assert float(row["dice"]) == pytest.approx(_hand_dice(after, gt), abs=1e-12)
    assert split, "no raw liver prediction had a second component: the test has no teeth"
    assert json.loads((lcc_out / "summary.json").read_text())["options"]["largest_component"] == ["Liver"]
    capsys.readouterr()
    # a concept the set does not have: refused before any case runs, naming it and the set's concepts
    assert main([*base, "--largest-component", "livr", "--output-dir", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert "'livr'" in err and "liver, tumor" in err
    assert not (tmp_path / "typo" / "per_case.csv").exists()


def test_weights_recording_the_clean_up_are_scored_with_it_as_infer_sam_applies_it(tmp_path, tiny_config):
    """Weights recording ``largest_component`` (the demo's organs): evaluated with it by default, exactly as
    --largest-component names those of the set's concepts; --no-largest-component gives the raw masks."""
    from tests.conftest import save_tiny_adapter

    adapter = save_tiny_adapter(tiny_config, tmp_path / "adapter", {"largest_component": ["liver", "spleen"]})
    src = _dataset(tmp_path / "Dataset914_Liver", n_cases=2)
    sweep = ["--thresholds", "0.1", "0.3", "0.5"]
    base = ["--config", str(tiny_config), "--weights", str(adapter), "-q", "--dataset", str(src), *sweep]
    runs = {"recorded": [], "named": ["--largest-component", "liver"], "off": ["--no-largest-component"]}
    for name, flags in runs.items():
        assert main([*base, *flags, "--output-dir", str(tmp_path / name)]) == 0
    rows = {name: _rows(tmp_path / name) for name in runs}
    cleaned = 0
    for recorded, named, off in zip(rows["recorded"], rows["named"], rows["off"]):

        def mask(name, row):
            return np.asarray(nib.load(tmp_path / name / row["prediction"]).dataobj) > 0

        np.testing.assert_array_equal(mask("recorded", recorded), mask("named", named))
        assert recorded["dice"] == named["dice"]
        if recorded["concept"] == "tumor":
            np.testing.assert_array_equal(mask("recorded", recorded), mask("off", off))
        cleaned += not np.array_equal(mask("recorded", recorded), mask("off", off))
    assert cleaned, "no raw liver prediction had a second component: the test has no teeth"
    options = json.loads((tmp_path / "recorded" / "summary.json").read_text())["options"]
    assert options["largest_component"] == {"recorded": ["liver", "spleen"]}


def test_weights_with_per_concept_thresholds_are_scored_at_each_concepts_own(tmp_path, tiny_config, capsys):
    """Weights recording a threshold per concept: without --thresholds each concept is scored at its own
    (as infer_sam.py applies them), the same rows a sweep over those thresholds gives for it."""
    from tests.conftest import save_tiny_adapter

    adapter = save_tiny_adapter(
        tiny_config,
        tmp_path / "adapter",
        {"threshold": 0.3, "concepts": ["liver", "tumor"], "concept_thresholds": {"Liver": 0.02, "tumor": 0.2}},
    )
    src = _dataset(tmp_path / "Dataset913_Liver", n_cases=2)
    base = ["--config", str(tiny_config), "--weights", str(adapter), "-q", "--dataset", str(src)]
    own, sweep = tmp_path / "own", tmp_path / "sweep"
    assert main([*base, "--output-dir", str(own)]) == 0
    assert main([*base, "--thresholds", "0.02", "0.2", "0.3", "--output-dir", str(sweep)]) == 0
    expected = {"liver": "0.02", "tumor": "0.2", "liver and tumor": "0.3"}  # the last: the recorded default
    _rows_are_the_sweeps_at_each_own(own, sweep, expected, default="0.3")
    capsys.readouterr()


def _rows_are_the_sweeps_at_each_own(own: Path, sweep: Path, expected: dict, default: str) -> list[dict]:
    """Each concept scored once, at its expected threshold, with the sweep's row there; and those
    thresholds inside the tiny model's score range (other masks than at ``default``: the check has teeth)."""
    own_rows = _rows(own)
    assert {(r["concept"], r["threshold"]) for r in own_rows} == set(expected.items())
    swept = {(r["case_id"], r["concept"], r["threshold"]): r for r in _rows(sweep)}
    for row in own_rows:
        match = swept[(row["case_id"], row["concept"], row["threshold"])]
        assert (row["dice"], row["pred_size_px"]) == (match["dice"], match["pred_size_px"])
    at_default = [swept[(r["case_id"], r["concept"], default)]["pred_size_px"] for r in own_rows]
    assert [r["pred_size_px"] for r in own_rows] != at_default
    return own_rows


def test_concept_threshold_scores_named_concepts_at_their_own(tmp_path, tiny_config, capsys):
    """--concept-threshold 'CONCEPT=T' (how the demo's tables score per-concept thresholds chosen on valid):
    the named concepts at their own, the rest at the one --thresholds value; rows equal a sweep's."""
    src = _dataset(tmp_path / "Dataset914_Liver", n_cases=2)
    base = ["--config", str(tiny_config), "--weights", "none", "-q", "--dataset", str(src)]
    own, sweep = tmp_path / "own", tmp_path / "sweep"
    flags = ["--concept-threshold", "LIVER=0.02", "--concept-threshold", "liver and tumor=0.2"]
    assert main([*base, "--thresholds", "0.3", *flags, "--output-dir", str(own)]) == 0
    out = capsys.readouterr().out
    assert "each concept at its own threshold" in out and "best threshold per concept" not in out
    assert main([*base, "--thresholds", "0.02", "0.2", "0.3", "--output-dir", str(sweep)]) == 0
    expected = {"liver": "0.02", "liver and tumor": "0.2", "tumor": "0.3"}
    own_rows = _rows_are_the_sweeps_at_each_own(own, sweep, expected, default="0.3")
    # one headline over the concepts at their own thresholds (not one per threshold over a subset)
    (means,) = json.loads((own / "summary.json").read_text())["concept_means"]
    by_concept = {c: [float(r["dice"]) for r in own_rows if r["concept"] == c] for c in expected}
    assert means["threshold"] is None and set(means["per_concept"]) == set(expected)
    assert means["dice"] == pytest.approx(np.mean([np.mean(v) for v in by_concept.values()]))
    capsys.readouterr()
    # malformed, out of range, or beside a sweep: refused before the model loads, saying the form
    for bad in (["--concept-threshold", "liver"], ["--concept-threshold", "liver=2"]):
        assert main([*base, *bad, "--output-dir", str(tmp_path / "bad")]) == 2
        assert "CONCEPT=T" in capsys.readouterr().err
    sweep_flags = ["--thresholds", "0.2", "0.3", *flags]
    assert main([*base, *sweep_flags, "--output-dir", str(tmp_path / "bad")]) == 2
    assert "at most one --thresholds" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "per_case.csv").exists()
