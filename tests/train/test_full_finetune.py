"""Issue 16: after a full fine-tune (training.train_base_model), inference loads the trained model,
never the adapter on a base it was not trained with; training and loading count LoRA layers alike."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam3.adapters.errors import TrainedBaseError
from medsam3.adapters.loading import load_model
from medsam3.adapters.plan import plan_run
from medsam3.config import load_config
from medsam3.inference.predictor import Predictor
from medsam3.train.trainer import train
from tests.conftest import run_cli
from tests.train.conftest import tiny_train_config

PROMPTS = ["lesion", "kidney"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_checkpoint, shapes_dir):
    """One full fine-tune of the tiny model: LoRA and base weights trained, best_/last_ saved."""
    root = tmp_path_factory.mktemp("full_ft")
    config = tiny_train_config(
        root,
        tiny_checkpoint,
        shapes_dir,
        training=dict(train_base_model=True, max_steps=3, eval_steps=3, learning_rate=5e-2),
        output={"output_dir": str(root / "out")},
        evaluation={"compute_metrics_during_training": False, "metric": "loss"},
    )
    records = _Records()
    logger = logging.getLogger("medsam3")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    torch.set_num_threads(1)
    try:
        train(load_config(config), show_progress=False)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    inputs = root / "inputs"
    inputs.mkdir()
    for name in ("img1.png", "img2.png"):
        shutil.copy(shapes_dir / "valid" / name, inputs / name)
    return {"config": config, "out": root / "out", "inputs": inputs, "log": records.messages}


def _coco_results(out_dir: Path) -> list[tuple]:
    rows = json.loads((out_dir / "coco_results.json").read_text())
    return sorted((r["image_id"], r["category_id"], round(r["score"], 5), json.dumps(r["segmentation"])) for r in rows)


def _infer(full_run, out_dir: Path, *extra: str) -> int:
    args = ["--config", full_run["config"], "--input-dir", full_run["inputs"], "--output-dir", out_dir]
    args += ["--prompt", *PROMPTS, "--threshold", "0.0", "-q", *extra]
    return run_cli(*args)


def test_training_records_the_trained_base_and_its_full_model(full_run):
    out = full_run["out"]
    for prefix in ("best", "last"):
        adapter_meta = json.loads((out / f"{prefix}_lora_weights" / "medsam3_adapter.json").read_text())
        model_meta = json.loads((out / f"{prefix}_model" / "medsam3_model.json").read_text())
        assert adapter_meta["base_trained"] is True
        assert adapter_meta["full_model"] == f"{prefix}_model"
        assert model_meta["adapter"] == f"{prefix}_lora_weights" and model_meta["adapter_merged"] is True
        assert model_meta["step"] == adapter_meta["step"]


def _raw_scores(full_run, weights, *overrides: str) -> torch.Tensor:
    """Every query's score for the prompts on one input: what a model answers, before threshold and NMS."""
    cfg = load_config(full_run["config"], list(overrides))
    predictor = Predictor.from_plan(plan_run(cfg, None if weights is None else str(weights), check_hub=False))
    vision, sizes = predictor.encode_images([full_run["inputs"] / "img1.png"])
    no_box = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    rows = [(0, prompt, no_box) for prompt in PROMPTS]
    with torch.inference_mode():
        return torch.cat([raw.scores for raw in predictor.raw_outputs(vision, sizes, rows)])


def test_auto_detection_loads_best_model_with_the_same_masks_as_passing_it(full_run, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medsam3"):
        assert _infer(full_run, tmp_path / "auto") == 0
    assert "auto-detected full model" in caplog.text and "best_model" in caplog.text
    assert _infer(full_run, tmp_path / "explicit", "--weights", full_run["out"] / "best_model") == 0
    assert _coco_results(tmp_path / "auto") == _coco_results(tmp_path / "explicit")

    # The same model answers, query for query (the tiny model's masks may all be empty, so the scores of
    # every query are compared); the adapter on the untrained stock base, what used to happen silently,
    # answers otherwise: the comparison can tell the two apart.
    auto = _raw_scores(full_run, None)
    torch.testing.assert_close(auto, _raw_scores(full_run, full_run["out"] / "best_model"))
    wrong = _raw_scores(full_run, full_run["out"] / "best_lora_weights", "model.ignore_trained_base=true")
    assert (auto - wrong).abs().max() > 1e-4


def test_the_adapter_on_the_stock_base_fails_in_one_line_naming_best_model(full_run, tmp_path, capsys):
    code = _infer(full_run, tmp_path / "x", "--weights", full_run["out"] / "best_lora_weights")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("infer_sam.py: error:")
    assert f"--weights {full_run['out'] / 'best_model'}" in err
    assert "train_base_model" in err and "model.ignore_trained_base=true" in err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_a_checkpoint_or_a_stale_full_model_is_refused(full_run, tmp_path):
    cfg = load_config(full_run["config"])
    checkpoint = next(full_run["out"].glob("checkpoint-*"))
    with pytest.raises(TrainedBaseError, match="trained base was not saved with it.*--resume"):
        load_model(cfg, str(checkpoint))

    # best_lora_weights/ newer than best_model/ (a save interrupted between the two): auto-detection refuses.
    copy = tmp_path / "out"
    shutil.copytree(full_run["out"], copy)
    meta_file = copy / "best_model" / "medsam3_model.json"
    meta = json.loads(meta_file.read_text())
    meta["step"] -= 1
    meta_file.write_text(json.dumps(meta))
    cfg.output.output_dir = str(copy)
    with pytest.raises(TrainedBaseError, match="from training step"):
        load_model(cfg, None)


def test_the_full_model_with_its_own_adapter_on_top_is_refused(full_run):
    cfg = load_config(full_run["config"])
    cfg.model.name = str(full_run["out"] / "best_model")
    with pytest.raises(TrainedBaseError, match="already merged into"):
        load_model(cfg, str(full_run["out"] / "best_lora_weights"))


def test_training_logs_the_layer_count_loading_reports(full_run, caplog):
    trained = [int(m) for m in re.findall(r"LoRA on (\d+) layers", "\n".join(full_run["log"]))]
    assert len(trained) == 1
    cfg = load_config(full_run["config"])
    cfg.model.ignore_trained_base = True
    with caplog.at_level(logging.INFO, logger="medsam3"):
        model, _, _ = load_model(cfg, str(full_run["out"] / "best_lora_weights"))
    loaded = [int(m) for m in re.findall(r"loaded adapter .*: (\d+) LoRA layers", caplog.text)]
    from peft.tuners.lora import LoraLayer

    wrapped = sum(isinstance(m, LoraLayer) for m in model.modules())
    meta = json.loads((full_run["out"] / "best_lora_weights" / "medsam3_adapter.json").read_text())
    assert trained == loaded == [wrapped] == [meta["lora_layers"]]
