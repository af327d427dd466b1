"""The network: base SAM3 + processor from transformers, and where LoRA goes (PEFT injection and
its target rules).

May import: :mod:`medsam3.config` only. Knows nothing of adapter files (:mod:`medsam3.adapters`),
images or training.
"""

from .lora_targets import COMPONENTS, TARGET_RULES, TargetRule, select_lora_targets
from .sam3 import (
    ModelLoadError,
    add_lora,
    build_lora_config,
    count_lora_layers,
    load_base_model,
    load_processor,
    resolve_device,
    unwrap,
)

__all__ = [
    "COMPONENTS",
    "TARGET_RULES",
    "ModelLoadError",
    "TargetRule",
    "add_lora",
    "build_lora_config",
    "count_lora_layers",
    "load_base_model",
    "load_processor",
    "resolve_device",
    "select_lora_targets",
    "unwrap",
]
