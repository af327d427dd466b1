"""Acceptance: the tiny SAM3 learns two concepts of different shapes and says "not here" to the absent one."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from medsam3.config import load_config
from medsam3.data import CocoConceptDataset, load_rgb_image
from medsam3.evaluation.metrics import dice
from medsam3.inference.predictor import Predictor
from medsam3.train.trainer import train
from tests.train.conftest import tiny_train_config


@pytest.mark.slow  # 300 training steps: ~45 s on 2 idle cores, minutes on a busy machine
def test_tiny_sam3_learns_two_concepts_and_rejects_absent(tmp_path, learnable_checkpoint, shapes_dir):
    # Full fine-tuning of the tiny random model (training.train_base_model): a real SAM3 is pretrained,
    # this stand-in has to learn text-image matching from scratch. Presence weight 100 speeds that up.
    path = tiny_train_config(
        tmp_path,
        learnable_checkpoint,
        shapes_dir,
        training={
            "batch_size": 8,
            "learning_rate": 3e-3,
            "train_base_model": True,
            "num_epochs": 1000,
            "max_steps": 300,
            "eval_steps": 150,
            "logging_steps": 25,
            "save_steps": 1000,
        },
        lora={"rank": 32, "alpha": 32, "dropout": 0.0},
        loss={"loss_presence": 100.0},
        evaluation={"metric": "dice"},
    )
    cfg = load_config(path)
    t0 = time.perf_counter()
    result = train(cfg, show_progress=False)
    elapsed = time.perf_counter() - t0
    out = result.output_dir
    assert result.global_step == 300
    assert (out / "best_lora_weights" / "adapter_model.safetensors").is_file()
    assert (out / "best_model" / "config.json").is_file() and (out / "last_model" / "config.json").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [150, 300]
    print(f"trained 300 steps in {elapsed:.1f} s; eval dice {[round(r['dice'], 3) for r in evals]}")

    # Independent check through the inference path: the saved full model, on the training images.
    infer_cfg = load_config(path, [f"model.name={out / 'best_model'}"])
    predictor = Predictor.from_config(infer_cfg, weights="none", device="cpu")
    data = CocoConceptDataset.from_split(shapes_dir, "train", resolution=112, num_negatives=1)
    scores, absent_hits = [], 0
    for index in range(len(data)):
        masks, absent = data.semantic_targets(index)
        predictor.set_image(np.array(load_rgb_image(data.image_path(index))))
        present = list(masks)
        results = predictor.predict(present + absent, threshold=0.5)
        for prompt, det in zip(present, results[: len(present)]):
            scores.append(dice(det.semantic_mask(), masks[prompt]))
        for det in results[len(present) :]:
            absent_hits += int(len(det) > 0 and float(det.scores.max()) > 0.5)
    mean_dice = float(np.mean(scores))
    print(f"inference-path mean Dice {mean_dice:.3f} over {len(scores)} image/concept pairs")
    assert mean_dice >= 0.8
    assert absent_hits == 0
