"""Where LoRA weights come from and go to.

One entry point, :func:`load_model` (base SAM3 + the adapter a config or ``--weights`` names), and
the formats behind it: PEFT directories and safetensors (:mod:`.peft_format`), MedSAM3-v1's
upstream ``.pt`` converted exactly both ways (:mod:`.upstream`), the Hugging Face hub
(:mod:`.hub`: the offline decision, cache checks, downloads), merging into a plain ``Sam3Model``
(:mod:`.merge`). What a run loads is settled first and without torch (:mod:`.sources`, with
:mod:`.provenance` for adapters whose run also trained the base), so the CLI can check it early.

May import: :mod:`medsam3.model`, :mod:`medsam3.config`. Never inference, training or the CLI.
"""

# Light at import (no torch): the exceptions, concepts, the run plan, the hub layer and provenance. The rest loads torch
# and PEFT, so it is imported on first use; the CLI can catch AdapterError before torch is imported.
from .concepts import demo_adapters, demo_config, demo_weights_values, is_demo, prompt_warnings
from .errors import AdapterError, HubUnavailableError, TrainedBaseError
from .plan import RunPlan, plan_run, read_concepts, recorded_threshold, trained_concepts

_LAZY = {
    "AUTO_NAMES": "loading",
    "find_trained_adapter": "loading",
    "load_model": "loading",
    "read_adapter": "loading",
    "AdapterWeights": "peft_format",
    "apply_adapter": "peft_format",
    "read_peft_adapter": "peft_format",
    "save_adapter": "peft_format",
}

__all__ = [
    "AUTO_NAMES",
    "AdapterError",
    "AdapterWeights",
    "HubUnavailableError",
    "RunPlan",
    "TrainedBaseError",
    "apply_adapter",
    "demo_adapters",
    "demo_config",
    "demo_weights_values",
    "is_demo",
    "plan_run",
    "prompt_warnings",
    "read_concepts",
    "recorded_threshold",
    "trained_concepts",
    "find_trained_adapter",
    "load_model",
    "read_adapter",
    "read_peft_adapter",
    "save_adapter",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
