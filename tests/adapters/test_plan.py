"""The run plan: one rule for model, adapter, threshold and concepts, used by every command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam3.adapters.errors import AdapterError
from medsam3.adapters.plan import DEFAULT_THRESHOLD, plan_run
from medsam3.cli.infer import main as infer_main
from medsam3.config import load_config
from tests.conftest import save_tiny_adapter

DEMO_SLICE = Path(__file__).resolve().parents[2] / "medsam3" / "demo" / "examples" / "ct_dicom_slice.dcm"


def _trained_adapter(cfg_path: Path, out_dir: Path, metadata: dict) -> Path:
    """A tiny adapter saved where training saves its best one, with its metadata."""
    return save_tiny_adapter(cfg_path, out_dir, metadata)


@pytest.fixture
def auto_detected(tmp_path, tiny_config) -> Path:
    """The config's output_dir holds ``best_lora_weights/`` recording threshold 0.37 and two concepts."""
    output_dir = Path(load_config(tiny_config).output.output_dir)
    _trained_adapter(
        tiny_config,
        output_dir / "best_lora_weights",
        {"threshold": 0.37, "concepts": ["liver", "spleen"], "concept_thresholds": {"Spleen": 0.61}},
    )
    return tiny_config


def test_auto_detected_adapter_records_threshold_and_concepts(auto_detected):
    plan = plan_run(load_config(auto_detected), None, check_hub=False)
    assert plan.adapter.endswith("best_lora_weights")
    assert plan.threshold == pytest.approx(0.37)
    assert "best_lora_weights" in plan.threshold_source
    assert plan.vocabulary == ["liver", "spleen"]
    assert plan.threshold_for("spleen") == pytest.approx(0.61)  # per concept, case-insensitive
    assert plan.threshold_for("liver") == pytest.approx(0.37)
    flagged = plan_run(load_config(auto_detected), None, threshold=0.8, check_hub=False)
    assert flagged.threshold == 0.8 and flagged.threshold_for("spleen") == 0.8  # the flag beats every record


def test_cli_uses_the_auto_detected_adapters_threshold(auto_detected, tmp_path, rgb_image):
    image = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(image)
    out = tmp_path / "det.json"
    assert (
        infer_main(["--config", str(auto_detected), "--image", str(image), "--prompt", "liver", "--json", str(out)])
        == 0
    )
    written = json.loads(out.read_text())
    assert written["threshold"] == pytest.approx(0.37)
    assert "best_lora_weights" in written["adapter"]
    flagged = tmp_path / "flag.json"
    args = ["--config", str(auto_detected), "--image", str(image), "--prompt", "liver", "--json", str(flagged)]
    assert infer_main([*args, "--threshold", "0.9"]) == 0
    assert json.loads(flagged.read_text())["threshold"] == pytest.approx(0.9)


def test_demo_weights_use_their_recorded_threshold(tmp_path):
    recorded = json.loads((Path(DEMO_SLICE).parents[1] / "model" / "medsam3_model.json").read_text())["threshold"]
    plan = plan_run(load_config(None), "demo", check_hub=False)
    assert plan.threshold == pytest.approx(recorded) != DEFAULT_THRESHOLD
    assert "liver" in plan.vocabulary
    out = tmp_path / "demo.json"
    args = ["--weights", "demo", "--image", str(DEMO_SLICE), "--prompt", "liver", "--json", str(out)]
    assert infer_main([*args, "--output", str(tmp_path / "o.png"), "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["threshold"] == pytest.approx(recorded)


def test_demo_records_its_organs_clean_up_and_the_adapters_keep_it():
    """The base's 3D clean-up (chosen on valid, MODEL.md) is part of every demo weights value: the adapters
    add 2D concepts and record none of their own."""
    recorded = json.loads((Path(DEMO_SLICE).parents[1] / "model" / "medsam3_model.json").read_text())
    assert "liver" in recorded["largest_component"] and "brain tumor" not in recorded["largest_component"]
    for value in ("demo", "demo:hc18", "demo:ph2"):
        plan = plan_run(load_config(None), value, check_hub=False)
        assert plan.largest_component == tuple(recorded["largest_component"])
        assert plan.largest_component_for(" Liver ") and not plan.largest_component_for("brain tumor")


def test_plain_weights_fall_back_to_the_default(tiny_config):
    plan = plan_run(load_config(tiny_config), "none", check_hub=False)
    assert (plan.threshold, plan.threshold_source, plan.concepts) == (DEFAULT_THRESHOLD, "default", {})
    assert plan.largest_component == ()


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"threshold": 1.5}), "threshold must be a number in [0, 1]"),
        (json.dumps({"threshold": "0.3"}), "threshold must be a number in [0, 1]"),
        (json.dumps({"concept_thresholds": [0.3]}), "'concept_thresholds' must map"),
        (json.dumps({"largest_component": "liver"}), "'largest_component' must be a list of strings"),
    ],
)
def test_bad_metadata_is_refused_not_ignored(tmp_path, tiny_config, metadata, message):
    adapter = _trained_adapter(tiny_config, tmp_path / "adapter", {"threshold": 0.4})
    (adapter / "medsam3_adapter.json").write_text(metadata)
    with pytest.raises(AdapterError, match=re.escape(message)):
        plan_run(load_config(tiny_config), str(adapter), check_hub=False)


def test_threshold_out_of_range_is_a_user_error(tiny_config):
    with pytest.raises(AdapterError, match="--threshold must be in"):
        plan_run(load_config(tiny_config), "none", threshold=np.float64(1.2), check_hub=False)


def test_a_merged_model_keeps_the_adapters_threshold_and_concepts(auto_detected, tmp_path):
    from medsam3.adapters.merge import merge_adapter

    cfg = load_config(auto_detected)
    adapter = Path(cfg.output.output_dir) / "best_lora_weights"
    merged = merge_adapter(cfg, str(adapter), tmp_path / "merged")
    plan = plan_run(cfg, str(merged), check_hub=False)
    assert plan.sources.full_model == merged and plan.adapter == "none"
    assert plan.threshold == pytest.approx(0.37) and plan.vocabulary == ["liver", "spleen"]
    assert plan.threshold_for("spleen") == pytest.approx(0.61)


def test_cli_app_and_evaluate_share_the_demo_threshold(tmp_path):
    """One rule, three tools: the app's slider starts at the demo's recorded threshold, and medsam3-evaluate
    scores each concept at the threshold infer_sam.py applies to it (the demo records one per concept)."""
    import csv

    from medsam3.app.service import AppService
    from medsam3.cli.evaluate import main as evaluate_main
    from medsam3.inference.predictor import Predictor

    plan = plan_run(load_config(None), "demo", device="cpu", check_hub=False)
    service = AppService(Predictor.from_plan(plan), work_dir=tmp_path / "app")
    assert service.default_threshold == plan.threshold != DEFAULT_THRESHOLD

    examples = DEMO_SLICE.parent
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        f"image,label\n{examples / 'ct_abdomen_slab.nii.gz'},{examples / 'ct_abdomen_slab_labels.nii.gz'}\n"
    )
    args = ["--weights", "demo", "--volumes", str(pairs), "--label-prompts", str(examples / "labels.json")]
    assert evaluate_main([*args, "--device", "cpu", "--output-dir", str(tmp_path / "eval"), "-q"]) == 0
    with open(tmp_path / "eval" / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(float(r["threshold"]) == plan.threshold_for(r["concept"]) for r in rows)
    assert len({r["threshold"] for r in rows}) > 1  # the demo's concepts record thresholds of their own


def _same(a: list[tuple[float, str]], b: list[tuple[float, str]]) -> None:
    """The same detections: masks equal, scores close (one prompt per pass vs two moves them by ~1e-5)."""
    assert [mask for _, mask in a] == [mask for _, mask in b]
    assert [score for score, _ in a] == pytest.approx([score for score, _ in b], abs=5e-5)


def _cut(kept: list[tuple[float, str]]) -> float:
    """A threshold halfway between two scores near the middle that differ clearly (not on a score itself)."""
    scores = sorted({score for score, _ in kept})
    middle = len(scores) // 2
    for i in sorted(range(1, len(scores)), key=lambda i: abs(i - middle)):
        if scores[i] - scores[i - 1] > 1e-4:
            return round((scores[i] + scores[i - 1]) / 2, 6)
    raise AssertionError(f"no clear gap between the scores {scores}")


def test_recorded_per_concept_thresholds_are_applied_per_prompt(auto_detected, tmp_path, rgb_image):
    image = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(image)

    def detections(*extra: str) -> tuple[dict, dict]:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        args = ["--config", str(auto_detected), "--image", str(image), "--json", str(out), "--nms-iou", "1"]
        assert infer_main([*args, "-q", *extra]) == 0
        written = json.loads(out.read_text())
        # scores to 1e-5: one prompt per pass vs two moves them by ~1e-7
        kept = {
            p["prompt"]: [(round(d["score"], 5), d["mask"]["counts"]) for d in p["detections"]]
            for p in written["prompts"]
        }
        return written, kept

    written, everything = detections("--prompt", "liver", "spleen", "--threshold", "0.0")
    assert "concept_thresholds" not in written  # the flag overrides every record
    # Thresholds inside the random model's score range, so each decides what is kept.
    liver_t, spleen_t = _cut(everything["liver"]), _cut(everything["spleen"])
    metadata = Path(load_config(auto_detected).output.output_dir) / "best_lora_weights" / "medsam3_adapter.json"
    record = {**json.loads(metadata.read_text()), "threshold": liver_t, "concept_thresholds": {"Spleen": spleen_t}}
    metadata.write_text(json.dumps(record))

    written, planned = detections("--prompt", "liver", "spleen")
    assert written["threshold"] == pytest.approx(liver_t) and written["concept_thresholds"] == {"spleen": spleen_t}
    _same(planned["liver"], detections("--prompt", "liver", "--threshold", str(liver_t))[1]["liver"])
    _same(planned["spleen"], detections("--prompt", "spleen", "--threshold", str(spleen_t))[1]["spleen"])
    assert 0 < len(planned["spleen"]) < len(everything["spleen"])  # the record cut some, kept some
    assert 0 < len(planned["liver"]) < len(everything["liver"])
