"""Where LoRA weights come from and go to.

One entry point, :func:`load_model` (base SAM3 + the adapter a config or ``--weights`` names), and
the formats behind it: PEFT directories and safetensors (:mod:`.peft_format`), MedSAM3-v1's
upstream ``.pt`` converted exactly both ways (:mod:`.upstream`), the Hugging Face hub
(:mod:`.hub`), merging into a plain ``Sam3Model`` (:mod:`.merge`).

May import: :mod:`medsam3.model`, :mod:`medsam3.config`. Never inference, training or the CLI.
"""

from .loading import AUTO_NAMES, find_trained_adapter, load_model, read_adapter
from .peft_format import AdapterError, AdapterWeights, apply_adapter, read_peft_adapter, save_adapter

__all__ = [
    "AUTO_NAMES",
    "AdapterError",
    "AdapterWeights",
    "apply_adapter",
    "find_trained_adapter",
    "load_model",
    "read_adapter",
    "read_peft_adapter",
    "save_adapter",
]
