"""Optimizer and learning-rate schedule from ``training.*`` keys."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from transformers import get_scheduler

from ..config import TrainingConfig

__all__ = ["build_optimizer", "build_scheduler", "total_optimizer_steps"]

# training.lr_scheduler -> transformers' scheduler names (all with linear warmup from 0).
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_optimizer(params: Iterable[torch.nn.Parameter], tcfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with ``learning_rate``, ``weight_decay``, ``adam_beta1/2`` and ``adam_epsilon``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: LoRA matched nothing and train_base_model is off")
    return torch.optim.AdamW(
        params,
        lr=tcfg.learning_rate,
        weight_decay=tcfg.weight_decay,
        betas=(tcfg.adam_beta1, tcfg.adam_beta2),
        eps=tcfg.adam_epsilon,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainingConfig, total_steps: int):
    """``lr_scheduler`` (cosine | linear | constant) after ``warmup_steps`` of linear warmup."""
    return get_scheduler(
        _SCHEDULERS[tcfg.lr_scheduler],
        optimizer,
        num_warmup_steps=tcfg.warmup_steps,
        num_training_steps=max(1, total_steps),
    )


def total_optimizer_steps(tcfg: TrainingConfig, micro_batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``max_steps`` if set (it overrides ``num_epochs``, as in
    transformers' Trainer), else ``num_epochs`` epochs."""
    if tcfg.max_steps:
        return tcfg.max_steps
    return math.ceil(micro_batches_per_epoch / tcfg.gradient_accumulation_steps) * tcfg.num_epochs
