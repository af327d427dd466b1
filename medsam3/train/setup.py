"""Setting a run up from the config: data splits, gradient checkpointing, and a report of every key
that is set but cannot take effect here (so no ``training.*`` key is silently ignored)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..config import Config
from ..data import resolve_split
from .distributed import DistInfo

__all__ = ["enable_gradient_checkpointing", "report_config", "split_paths"]

logger = logging.getLogger(__name__)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every transformers ``GradientCheckpointingLayer`` (ViT and text layers); returns the count.

    ``Sam3Model`` does not declare ``supports_gradient_checkpointing``, so ``gradient_checkpointing_enable``
    refuses; its ViT layers are checkpointable layers all the same, and the ViT holds most activations.
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    count = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
            count += 1
    return count


def split_paths(cfg: Config, split: str):
    t = cfg.training
    path, ann = (
        (t.train_data_path, t.train_annotation_file) if split == "train" else (t.val_data_path, t.val_annotation_file)
    )
    if t.data_dir:
        return resolve_split(t.data_dir, split)
    if ann:
        return resolve_split(None, split, annotation_file=ann, image_root=path)
    if path:
        return resolve_split(path, split)
    return None


def report_config(cfg: Config, device: torch.device, dist_info: DistInfo) -> list[str]:
    """Log every key that is set but cannot take effect here; returns the messages (for tests)."""
    t, notes = cfg.training, []
    if t.mixed_precision != "no" and device.type != "cuda":
        notes.append(
            f"training.mixed_precision={t.mixed_precision!r} has no effect on {device.type}: autocast "
            f"applies on CUDA only, training runs in fp32"
        )
    if device.type == "cuda" and t.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        notes.append("training.mixed_precision='bf16' is not supported by this GPU; use 'fp16' or 'no'")
    if cfg.hardware.dataloader_pin_memory and device.type != "cuda":
        notes.append("hardware.dataloader_pin_memory=true has no effect without CUDA")
    if cfg.hardware.use_compile:
        notes.append(
            "hardware.use_compile=true is not applied to training (the decoder-layer hooks and "
            "variable prompt counts defeat torch.compile); training runs eagerly"
        )
    if cfg.output.push_to_hub:
        notes.append(
            "output.push_to_hub=true is not done by the trainer; upload best_lora_weights/ with "
            "`hf upload <repo> <output_dir>/best_lora_weights`"
        )
    if cfg.output.save_lora_only and t.train_base_model:
        notes.append(
            "output.save_lora_only=true with training.train_base_model=true: the base weights change "
            "too, so full models (best_model/, last_model/) are saved as well"
        )
    if cfg.model.lora_weights not in (None, "none"):
        notes.append(
            f"model.lora_weights={cfg.model.lora_weights!r} is an inference key: training starts from "
            f"fresh LoRA (use --resume to continue a run)"
        )
    if cfg.hardware.precision != "auto":
        notes.append(
            f"hardware.precision={cfg.hardware.precision!r} applies to validation's Predictor only; "
            f"training precision is training.mixed_precision"
        )
    for note in notes:
        if dist_info.is_main:
            logger.warning("note: %s", note)
    return notes
