"""One training step under bf16 autocast on CPU, against fp32 (the CUDA default path, run where CI can)."""

from __future__ import annotations

import json

import torch

from medsam3.config import load_config
from medsam3.train.trainer import Trainer
from tests.train.conftest import tiny_train_config

LOSS_RTOL = 0.05  # bf16 keeps ~3 significant digits; the summed loss terms agree to well under 5%


def _one_step(tmp_path, checkpoint, data_dir, precision: str) -> tuple[Trainer, dict]:
    run_dir = tmp_path / precision
    run_dir.mkdir()
    cfg = tiny_train_config(
        run_dir, checkpoint, data_dir, training={"max_steps": 1, "mixed_precision": precision, "logging_steps": 1}
    )
    trainer = Trainer(load_config(cfg), show_progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.fit()
    log = [json.loads(line) for line in (run_dir / "outputs" / "train_log.jsonl").read_text().splitlines()]
    step = next(r for r in log if r["type"] == "train")
    changed = {n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(before[n], p)}
    return trainer, {**step, "changed": changed}


def test_training_step_bf16_on_cpu_matches_fp32(tmp_path, learnable_checkpoint, shapes_dir):
    fp32, a = _one_step(tmp_path, learnable_checkpoint, shapes_dir, "no")
    bf16, b = _one_step(tmp_path, learnable_checkpoint, shapes_dir, "bf16")
    assert fp32.amp_dtype is None and bf16.amp_dtype is torch.bfloat16
    assert not bf16.scaler.is_enabled()  # a GradScaler is for fp16 only
    assert abs(b["loss"] - a["loss"]) <= LOSS_RTOL * abs(a["loss"]), (a["loss"], b["loss"])
    # the same tensors move (LoRA B; A's first gradient is zero while B is zero), with finite values;
    # the geometry encoder's self-attention q/k get an exactly-zero gradient in fp32 (its softmax
    # over the CLS and padding is flat) that bf16 rounding makes non-zero: a few may differ
    assert a["changed"] and len(a["changed"] ^ b["changed"]) <= 0.05 * len(a["changed"])
    assert all(torch.isfinite(p).all() for p in bf16.model.parameters() if p.requires_grad)
    # the trained weights stay fp32 (autocast casts per op; the master copy is not bf16)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters() if p.requires_grad)
