"""Trainer validation and ``medsam3-evaluate`` give the same Dice on the same split and weights.

One reader (``medsam3.data.coco_records.read_coco``) and one evaluator (``medsam3.evaluation``): the
split below holds every case where the old readers disagreed (two categories with one prompt, a
crowd region, a box-only and a degenerate annotation, an absent concept, an image missing on disk).
The numbers are also recomputed from the CLI's saved masks and ground truth drawn here, so both
paths agreeing on a wrong rule would fail too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from medsam3.__main__ import main as medsam3_main
from medsam3.config import load_config
from medsam3.train.trainer import train
from tests.train.conftest import tiny_train_config

SIZE = 64
THRESHOLD = 0.2


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1, c0:c1] = True
    return m


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}


def _ann(image_id: int, category_id: int, segmentation, iscrowd: int = 0, bbox=None) -> dict:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "bbox": bbox or [0, 0, 1, 1],
        "iscrowd": iscrowd,
    }


def write_split(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """A Roboflow split; returns the ground truth the rules give: {file: {prompt: union mask}}."""
    folder.mkdir(parents=True)
    lesion_a, lesion_b = _rect(5, 25, 5, 25), _rect(40, 56, 36, 60)
    kidney, crowd = _rect(30, 50, 8, 28), _rect(4, 20, 30, 60)
    kidney_poly = [34.0, 6.0, 58.0, 6.0, 58.0, 26.0, 34.0, 26.0]  # pixels rows 6-25, cols 34-57
    anns = [
        _ann(1, 1, _rle(lesion_a)),  # 'lesion' and 'Lesion ' are one concept: merged on img1
        _ann(1, 2, [[36.0, 40.0, 60.0, 40.0, 60.0, 56.0, 36.0, 56.0]]),  # lesion_b as a polygon
        _ann(1, 3, [], bbox=[8, 30, 20, 20]),  # box-only kidney: present on img1, not scored there
        _ann(2, 3, _rle(kidney)),
        _ann(2, 1, _rle(crowd), iscrowd=1),  # crowd lesion: part of the lesion's ground truth
        _ann(4, 3, [kidney_poly]),
        _ann(4, 1, [[0.0, 0.0, 10.0, 10.0, 20.0, 20.0]]),  # zero area: skipped, lesion still present
    ]
    for i, a in enumerate(anns, start=1):
        a["id"] = i
    rng = np.random.default_rng(0)
    images = []
    for i, name in enumerate(["img1.png", "img2.png", "img3.png", "img4.png", "gone.png"], start=1):
        images.append({"id": i, "file_name": name, "height": SIZE, "width": SIZE})
        if name != "gone.png":  # listed but missing on disk
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / name)
    cats = [
        {"id": 0, "name": "organs"},
        {"id": 1, "name": "lesion"},
        {"id": 2, "name": "Lesion "},
        {"id": 3, "name": "kidney"},
    ]
    (folder / "_annotations.coco.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    poly = np.zeros((SIZE, SIZE), bool)
    poly[6:26, 34:58] = True
    return {
        "img1.png": {"lesion": lesion_a | lesion_b},
        "img2.png": {"lesion": crowd, "kidney": kidney},
        "img4.png": {"kidney": poly},
    }


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2.0 * float((pred & gt).sum()) / float(pred.sum() + gt.sum())


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_trainer_validation_dice_equals_medsam3_evaluate(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "data"
    truth = write_split(data / "valid")
    write_split(data / "train")
    config = tiny_train_config(
        tmp_path,
        tiny_checkpoint,
        data,
        training={"max_steps": 1, "eval_steps": 1, "save_steps": 1000, "num_negatives": 2},
        evaluation={"metric": "dice", "threshold": THRESHOLD, "compute_metrics_during_training": True},
    )
    result = train(load_config(config), show_progress=False)
    log = [json.loads(line) for line in (result.output_dir / "train_log.jsonl").read_text().splitlines()]
    (val,) = [r for r in log if r["type"] == "eval"]
    adapter = result.output_dir / "best_lora_weights"
    assert adapter.is_dir()

    out = tmp_path / "eval"
    cli = ["evaluate", "--config", str(config), "--weights", str(adapter), "--data-dir", str(data), "--split", "valid"]
    cli += ["--include-absent", "--threshold", str(THRESHOLD), "--output-dir", str(out), "-q"]
    capsys.readouterr()
    assert medsam3_main(cli) == 1  # `python -m medsam3 evaluate`; 1: one case failed (the missing image)
    stdout = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [f["case"] for f in summary["failures"]] == ["gone.png"]
    (means,) = summary["concept_means"]
    assert "mean Dice over concepts [text, threshold 0.2]" in stdout
    print(f"validation {val['dice']:.4f}, evaluate {means['dice']:.4f}, per concept {means['per_concept']}")

    # the number that picked best_model is the number medsam3-evaluate reports for it
    assert val["dice"] == pytest.approx(means["dice"], abs=1e-6)
    assert val["iou"] == pytest.approx(means["iou"], abs=1e-6)
    assert val["false_positive_rate"] == pytest.approx(means["false_positive_rate"], abs=1e-6)
    assert val["per_concept"].keys() == means["per_concept"].keys() == {"lesion", "kidney"}
    for concept, got in val["per_concept"].items():
        assert got == pytest.approx(means["per_concept"][concept], abs=1e-6)

    # independent recomputation from the saved masks and the ground truth drawn above
    with open(out / "per_case.csv", newline="") as fh:
        saved = {(r["case_id"], r["concept"]): out / r["prediction"] for r in csv.DictReader(fh)}
    # lesion on img1 (two categories merged) and img2 (crowd); kidney on img2 and img4; img3: both
    # absent. Not asked: kidney on img1 (box-only), lesion on img4 (degenerate): present, no mask.
    assert set(saved) == {(f, c) for f, cs in truth.items() for c in cs} | {
        ("img3.png", "lesion"),
        ("img3.png", "kidney"),
    }
    per_concept: dict[str, list[float]] = {"lesion": [], "kidney": []}
    for name, concepts in truth.items():
        for prompt, gt in concepts.items():
            per_concept[prompt].append(_dice(np.asarray(Image.open(saved[(name, prompt)])) > 0, gt))
    expected = {c: float(np.mean(v)) for c, v in per_concept.items()}
    assert {c: v["images"] for c, v in val["per_concept"].items()} == {"lesion": 2, "kidney": 2}
    for concept, value in expected.items():
        assert val["per_concept"][concept]["dice"] == pytest.approx(value, abs=1e-9)
    assert val["dice"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    assert 0.0 < val["dice"] < 1.0, "the test needs a model that is neither empty nor perfect"
    fired = [bool((np.asarray(Image.open(saved[("img3.png", p)])) > 0).any()) for p in ("lesion", "kidney")]
    assert val["false_positive_rate"] == pytest.approx(sum(fired) / 2)


def test_training_records_per_concept_thresholds_that_inference_applies(tmp_path, tiny_checkpoint):
    from medsam3.adapters.plan import plan_run
    from medsam3.train.validate import THRESHOLD_GRID

    data = tmp_path / "data"
    write_split(data / "valid")
    write_split(data / "train")
    config = tiny_train_config(
        tmp_path,
        tiny_checkpoint,
        data,
        training={"max_steps": 1, "eval_steps": 1, "save_steps": 1000, "num_negatives": 2},
        evaluation={"metric": "dice", "threshold": THRESHOLD, "record_concept_thresholds": True},
    )
    result = train(load_config(config), show_progress=False)
    (val,) = [
        json.loads(line)
        for line in (result.output_dir / "train_log.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    meta = json.loads((result.output_dir / "best_lora_weights" / "medsam3_adapter.json").read_text())
    assert meta["threshold"] == THRESHOLD and meta["concept_thresholds"] == val["concept_thresholds"]
    assert set(meta["concept_thresholds"]) == {"lesion", "kidney"}
    assert set(meta["concept_thresholds"].values()) <= {THRESHOLD, *THRESHOLD_GRID}
    plan = plan_run(load_config(config), str(result.output_dir / "best_lora_weights"), check_hub=False)
    assert {c: plan.threshold_for(c) for c in ("lesion", "kidney")} == meta["concept_thresholds"]
