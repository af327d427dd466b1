"""The training loop honours every training key; checkpoints, resume, logs and saved adapters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsam3.config import load_config
from medsam3.inference.predictor import Predictor
from medsam3.train.checkpoint import list_checkpoints, load_trainer_state
from medsam3.train.trainer import Trainer, train
from tests.train.conftest import tiny_train_config


def _log(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["type"] == kind]


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def _cfg(tmp_path, tiny_checkpoint, shapes_dir, name="run", training=None, **sections):
    run = tmp_path / name
    run.mkdir()
    return load_config(tiny_train_config(run, tiny_checkpoint, shapes_dir, training=training, **sections))


def test_training_keys_reach_optimizer_loader_and_model(tmp_path, tiny_checkpoint, shapes_dir, caplog):
    cfg = _cfg(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training=dict(
            batch_size=3,
            num_workers=1,
            learning_rate=2e-4,
            weight_decay=0.05,
            adam_beta1=0.8,
            adam_beta2=0.95,
            adam_epsilon=1e-6,
            gradient_checkpointing=True,
            mixed_precision="bf16",
            max_steps=1,
        ),
        hardware={"dataloader_pin_memory": True},
    )
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg, show_progress=False)
    group = trainer.optimizer.param_groups[0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.05, (0.8, 0.95), 1e-6)
    assert trainer.scheduler.base_lrs == [2e-4]
    loader = trainer._loader(0, 0)
    assert (loader.batch_size, loader.num_workers, loader.pin_memory) == (3, 1, False)
    # CPU: bf16 autocast applies (as on CUDA); pin_memory cannot apply, and the run says so.
    assert trainer.amp_dtype is torch.bfloat16
    assert "mixed_precision" not in caplog.text
    assert "dataloader_pin_memory=true has no effect" in caplog.text
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing for m in layers)
    trainer.fit()  # one step with checkpointing and a worker process
    assert trainer.global_step == 1


def test_seed_makes_runs_reproducible(tmp_path, tiny_checkpoint, shapes_dir):
    common = dict(max_steps=3, seed=7)
    a = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "a", training=common, lora={"dropout": 0.1}), show_progress=False
    )
    b = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "b", training=common, lora={"dropout": 0.1}), show_progress=False
    )
    c = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "c", training={**common, "seed": 8}, lora={"dropout": 0.1}),
        show_progress=False,
    )
    ta, tb, tc = (_adapter(r.output_dir / "last_lora_weights") for r in (a, b, c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def test_accumulation_of_4_batches_of_1_equals_one_batch_of_4(tmp_path, tiny_checkpoint, shapes_dir):
    """Same 4 images, same prompts (num_negatives=1: every image has 1 positive + 1 negative query)."""
    grads = []
    for name, bs, accum in (("big", 4, 1), ("accum", 1, 4)):
        cfg = _cfg(
            tmp_path,
            tiny_checkpoint,
            shapes_dir,
            name,
            training=dict(batch_size=bs, gradient_accumulation_steps=accum, max_steps=1),
        )
        trainer = Trainer(cfg, show_progress=False)
        # A deterministic model: SAM3's own dropout layers (DETR/decoder, active in train mode) off.
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        window = next(trainer._windows())
        assert len(window) == accum
        trainer.accumulate(window)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    big, acc = grads
    assert big.keys() == acc.keys() and len(big) > 0
    flat_big = torch.cat([big[n].flatten() for n in big])
    flat_acc = torch.cat([acc[n].flatten() for n in big])
    assert float((flat_acc - flat_big).norm() / flat_big.norm()) < 1e-5


def test_warmup_and_schedules_are_visible_in_logged_lr(tmp_path, tiny_checkpoint, shapes_dir):
    lrs = {}
    for sched in ("constant", "linear", "cosine"):
        result = train(
            _cfg(
                tmp_path,
                tiny_checkpoint,
                shapes_dir,
                sched,
                training=dict(learning_rate=1e-3, warmup_steps=4, lr_scheduler=sched, max_steps=8, num_epochs=10),
            ),
            show_progress=False,
        )
        lrs[sched] = [r["lr"] for r in _log(result.output_dir)]
    for values in lrs.values():
        assert values[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs["constant"][5:] == pytest.approx([1e-3] * 3)
    assert lrs["linear"][5:] == pytest.approx([7.5e-4, 5e-4, 2.5e-4])
    assert lrs["cosine"][6] == pytest.approx(5e-4)  # half-way through the decay
    assert lrs["cosine"][5] > lrs["linear"][5]


def test_clipping_bounds_the_gradient_norm(tmp_path, tiny_checkpoint, shapes_dir):
    clipped = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "clip", training=dict(max_grad_norm=1e-3, max_steps=3)),
        show_progress=False,
    )
    for rec in _log(clipped.output_dir):
        assert rec["grad_norm"] > 1e-3
        assert rec["grad_norm_after_clip"] <= 1e-3 * (1 + 1e-4)
    free = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "free", training=dict(max_grad_norm=0.0, max_steps=2)),
        show_progress=False,
    )
    for rec in _log(free.output_dir):
        assert rec["grad_norm_after_clip"] == pytest.approx(rec["grad_norm"], rel=1e-5)


def test_logging_eval_save_steps_and_save_total_limit(tmp_path, tiny_checkpoint, shapes_dir):
    cfg = _cfg(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training=dict(max_steps=6, num_epochs=10, logging_steps=2, eval_steps=3, save_steps=2, save_total_limit=2),
        evaluation={"metric": "loss", "save_predictions": True},
    )
    result = train(cfg, show_progress=False)
    out = result.output_dir
    assert [r["step"] for r in _log(out)] == [2, 4, 6]
    evals = _log(out, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    assert {"val_loss", "dice", "iou", "per_concept", "false_positive_rate"} <= evals[0].keys()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]  # 2 pruned
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp", ".old"))]
    state = load_trainer_state(out / "checkpoint-6")
    assert state["global_step"] == 6 and {"optimizer", "scheduler", "scaler", "rng"} <= state.keys()
    assert (out / "predictions_step3.json").is_file()
    assert (out / "best_lora_weights").is_dir() and (out / "last_lora_weights").is_dir()
    assert not (out / "best_model").exists()  # save_lora_only: true
    # What training writes, the Predictor loads: explicitly and by auto-detect (best first).
    infer = load_config(cfg.source.split(" ")[0])
    for weights in (str(out / "best_lora_weights"), str(out / "checkpoint-6"), None):
        predictor = Predictor.from_config(infer, weights=weights, device="cpu")
        assert predictor.adapter_origin.startswith(str(out))


def test_kill_and_resume_reaches_the_same_adapter(tmp_path, tiny_checkpoint, shapes_dir, monkeypatch):
    # Dropout, augmentation and synonyms-free negatives make every step depend on RNG and data order;
    # 4 micro-batches per epoch and a save at step 3 make the resume point fall mid-epoch.
    training = dict(max_steps=7, num_epochs=10, save_steps=3, eval_steps=100, lr_scheduler="cosine", warmup_steps=2)
    sections = dict(lora={"dropout": 0.2}, augmentation={"hflip_prob": 0.5, "brightness": 0.2})
    full = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "full", training=training, **sections), show_progress=False
    )

    cfg = _cfg(tmp_path, tiny_checkpoint, shapes_dir, "killed", training=training, **sections)
    original = Trainer._step

    def dying_step(self, window):
        if self.global_step == 4:  # after the step-3 checkpoint, mid-way through step 5
            raise KeyboardInterrupt
        return original(self, window)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.setattr(Trainer, "_step", original)
    assert [p.name for p in list_checkpoints(cfg.output.output_dir)] == ["checkpoint-3"]
    resumed = train(cfg, resume="latest", show_progress=False)
    assert resumed.global_step == 7
    a, b = _adapter(full.output_dir / "last_lora_weights"), _adapter(resumed.output_dir / "last_lora_weights")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    # The log continues where the checkpoint was taken: step 4 of the killed run is replaced, not duplicated.
    assert [r["step"] for r in _log(resumed.output_dir)] == [1, 2, 3, 4, 5, 6, 7]


def test_resume_errors_are_actionable(tmp_path, tiny_checkpoint, shapes_dir):
    cfg = _cfg(tmp_path, tiny_checkpoint, shapes_dir, training=dict(max_steps=1))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(cfg, resume="latest", show_progress=False)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        Trainer(cfg, resume=str(tmp_path), show_progress=False)


def test_num_epochs_decides_the_step_count_without_max_steps(tmp_path, tiny_checkpoint, shapes_dir):
    # 8 training images, batch 4, accumulation 1: 2 optimizer steps per epoch.
    result = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, training=dict(num_epochs=2, batch_size=4)), show_progress=False
    )
    assert result.global_step == 4
    assert [r["epoch"] for r in _log(result.output_dir)] == [0, 0, 1, 1]
    # max_steps overrides num_epochs (as in transformers' Trainer): 5 steps run into a third epoch.
    longer = train(
        _cfg(tmp_path, tiny_checkpoint, shapes_dir, "longer", training=dict(num_epochs=1, batch_size=4, max_steps=5)),
        show_progress=False,
    )
    assert longer.global_step == 5
    assert [r["epoch"] for r in _log(longer.output_dir)] == [0, 0, 1, 1, 2]


def test_save_lora_only_false_writes_a_merged_model_that_predicts_like_the_adapter(
    tmp_path, tiny_checkpoint, shapes_dir
):
    import numpy as np
    from PIL import Image

    cfg = _cfg(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training=dict(max_steps=3, learning_rate=5e-2),
        output={"save_lora_only": False},
    )
    out = train(cfg, show_progress=False).output_dir
    assert (out / "last_model" / "config.json").is_file()
    image = np.asarray(Image.open(shapes_dir / "train" / "img1.png"))
    infer = load_config(cfg.source.split(" ")[0])
    with_adapter = Predictor.from_config(infer, weights=str(out / "last_lora_weights"), device="cpu")
    infer.model.name = str(out / "last_model")
    merged = Predictor.from_config(infer, weights="none", device="cpu")
    for p in (with_adapter, merged):
        p.set_image(image)
    a, b = with_adapter.predict(["lesion"], threshold=0.0)[0], merged.predict(["lesion"], threshold=0.0)[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    base = Predictor.from_config(load_config(cfg.source.split(" ")[0]), weights="none", device="cpu")
    base.set_image(image)
    assert np.abs(base.predict(["lesion"], threshold=0.0)[0].scores - a.scores).max() > 2e-3  # training changed it


def test_tensorboard_events_mirror_the_jsonl_log(tmp_path, tiny_checkpoint, shapes_dir):
    from tensorboard.backend.event_processing import event_accumulator  # a test dependency: never skipped

    cfg = _cfg(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training=dict(max_steps=3, eval_steps=3, warmup_steps=2, lr_scheduler="linear"),
        output={"logging_dir": "tb"},
    )
    out = train(cfg, show_progress=False).output_dir
    acc = event_accumulator.EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/val_loss", "eval/dice"} <= set(tags)
    logged = _log(out)
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in logged] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([r["lr"] for r in logged])
    assert acc.Scalars("eval/val_loss")[0].value == pytest.approx(_log(out, "eval")[0]["val_loss"])


def test_evaluation_threshold_sets_the_validation_score_cut(tmp_path, tiny_checkpoint, shapes_dir):
    """evaluation.threshold decides which detections validation (and best-checkpoint choice) counts."""
    evals = {}
    for threshold in (0.0, 1.0):
        cfg = _cfg(
            tmp_path,
            tiny_checkpoint,
            shapes_dir,
            name=f"t{threshold}",
            training=dict(max_steps=1, eval_steps=1, save_steps=1),
            evaluation={"metric": "dice", "threshold": threshold},
        )
        assert cfg.evaluation.threshold == threshold
        (evals[threshold],) = _log(train(cfg, show_progress=False).output_dir, "eval")
    # Every query scores above 0 and none reaches 1: all absent prompts "detected" vs none.
    assert evals[0.0]["false_positive_rate"] == 1.0 and evals[0.0]["dice"] > 0
    assert evals[1.0]["false_positive_rate"] == 0.0 and evals[1.0]["dice"] == 0.0


def test_evaluation_threshold_out_of_range_is_a_config_error(tmp_path):
    from medsam3.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"evaluation.threshold.*out of range"):
        config_from_dict({"evaluation": {"threshold": 1.5}})
