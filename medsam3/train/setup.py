"""Setting a run up from the config: data splits (:mod:`.data_paths`) and datasets, the model with LoRA (and
gradient checkpointing), and a report of every key that is set but cannot take effect here (so no ``training.*``
key is silently ignored)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..config import Config
from ..data.coco import CocoConceptDataset
from ..data.transforms import AugmentConfig
from ..errors import UserError
from ..model import add_lora, load_base_model
from .data_paths import SplitPaths, split_paths
from .distributed import DistInfo

__all__ = [
    "TrainingError",
    "build_datasets",
    "build_model",
    "enable_gradient_checkpointing",
    "report_config",
    "split_paths",
]

logger = logging.getLogger(__name__)


class TrainingError(UserError):
    """A training setup problem the user can fix (data paths, config)."""


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


def build_datasets(
    cfg: Config, train: SplitPaths, valid: SplitPaths | None, resolution: int
) -> tuple[CocoConceptDataset, CocoConceptDataset | None]:
    """The train split (augmented, synonyms on) and the validation split (neither), at ``resolution``."""
    t, aug = cfg.training, cfg.augmentation
    augment = AugmentConfig(
        hflip_prob=aug.hflip_prob,
        vflip_prob=aug.vflip_prob,
        scale_range=tuple(aug.scale_range),
        brightness=aug.brightness,
        contrast=aug.contrast,
    )
    # SAM3's mask output size (288 at 1008 px)
    common = dict(resolution=resolution, num_negatives=t.num_negatives, mask_resolution=(resolution // 14) * 4)
    train_set = CocoConceptDataset(
        train.annotation_file, train.image_root, augment=augment, seed=t.seed, use_synonyms=True, **common
    )
    val_set = None
    if valid is not None:
        val_set = CocoConceptDataset(valid.annotation_file, valid.image_root, seed=t.seed, **common)
    return train_set, val_set


def build_model(cfg: Config, processor, local_only: bool) -> nn.Module:
    """The base model with LoRA; every weight trainable with ``train_base_model``; checkpointing as asked."""
    model, _ = load_base_model(cfg.model, local_files_only=local_only, processor=processor)
    model = add_lora(model, cfg.lora)
    if cfg.training.train_base_model:
        for p in model.parameters():
            p.requires_grad_(True)
    if cfg.training.gradient_checkpointing:
        n = enable_gradient_checkpointing(model)
        if n == 0:
            raise TrainingError("training.gradient_checkpointing: this model has no checkpointable layers")
        logger.info("gradient checkpointing on %d layers", n)
    return model


def report_config(cfg: Config, device: torch.device, dist_info: DistInfo) -> list[str]:
    """Log every key that is set but cannot take effect here; returns the messages (for tests)."""
    t, notes = cfg.training, []
    if t.mixed_precision == "fp16" and device.type != "cuda":
        notes.append(
            f"training.mixed_precision='fp16' has no effect on {device.type}: fp16 autocast (with its "
            f"gradient scaler) applies on CUDA only, training runs in fp32; 'bf16' works on CPU too"
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
