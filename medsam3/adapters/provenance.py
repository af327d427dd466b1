"""Which full model belongs to which adapter, after a run that trained the base model too.

With ``training.train_base_model: true`` the base weights change as well as the LoRA ones, so the
adapter alone is right only on the base it was trained with, and that base exists only inside the
full model saved beside it (``best_lora_weights/`` belongs to ``best_model/``, ``last_lora_weights/``
to ``last_model/``; the adapter is merged into it). Training records this in ``medsam3_adapter.json``
(``base_trained``, ``full_model``, ``step``) and ``medsam3_model.json`` (``adapter``, ``step``); here
loading reads it, so that an adapter is never silently applied to a base it was not trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import AdapterError, TrainedBaseError

__all__ = [
    "ADAPTER_METADATA",
    "MODEL_METADATA",
    "OVERRIDE_KEY",
    "base_was_trained",
    "full_model_for",
    "full_model_name",
    "is_full_model_dir",
    "read_training_metadata",
    "refuse_other_base",
]

ADAPTER_METADATA = "medsam3_adapter.json"
MODEL_METADATA = "medsam3_model.json"
OVERRIDE_KEY = "model.ignore_trained_base"
"""The config key with which a user asks to apply such an adapter to another base anyway."""


def read_training_metadata(directory: str | Path) -> dict:
    """medsam3's training record beside an adapter (``medsam3_adapter.json``); empty if there is none."""
    path = Path(directory) / ADAPTER_METADATA
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc}); restore it from the training output or delete it") from exc
    if not isinstance(meta, dict):
        raise AdapterError(f"{path}: expected a JSON object; restore it from the training output or delete it")
    return meta


def full_model_name(adapter_name: str) -> str:
    """``best_lora_weights`` -> ``best_model``: the full model saved beside a named adapter."""
    return adapter_name.replace("_lora_weights", "_model")


def base_was_trained(meta: dict) -> bool:
    return bool(meta.get("base_trained"))


def is_full_model_dir(path: Path) -> bool:
    """A transformers checkpoint directory (config.json, no LoRA adapter), e.g. ``best_model/``."""
    return path.is_dir() and (path / "config.json").is_file() and not (path / "adapter_model.safetensors").exists()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainedBaseError(f"{path}: unreadable ({exc}); restore it from the training output") from exc
    return data if isinstance(data, dict) else {}


def full_model_for(adapter_dir: Path, meta: dict) -> Path:
    """The full model directory that belongs to an adapter whose base was trained; checked, or an error."""
    name = meta.get("full_model")
    if not name:
        raise TrainedBaseError(
            f"{adapter_dir}: saved by a run that also trained the base model (training.train_base_model: true), "
            f"and no full model was saved with it (a checkpoint); finish the run (--resume) and use the "
            f"best_model/ or last_model/ it writes"
        )
    full = adapter_dir.parent / name
    if not (full / "config.json").is_file():
        raise TrainedBaseError(
            f"{adapter_dir}: trained together with its base model, whose weights are in {full}/, but that "
            f"directory is missing or incomplete; restore it (the adapter alone gives wrong results)"
        )
    model_meta = _read_json(full / MODEL_METADATA) if (full / MODEL_METADATA).is_file() else {}
    if model_meta.get("step") != meta.get("step"):
        raise TrainedBaseError(
            f"{full}/ is from training step {model_meta.get('step')} but {adapter_dir} from step "
            f"{meta.get('step')} (an interrupted save?); use the pair of one step, e.g. last_model/"
        )
    return full


def refuse_other_base(adapter_dir: Path, meta: dict, base_name: str) -> TrainedBaseError:
    """The one-line error for applying a trained-base adapter onto ``base_name``."""
    name = meta.get("full_model")
    full = adapter_dir.parent / name if name else None
    if full is not None and Path(base_name).expanduser().resolve() == full.resolve():
        return TrainedBaseError(
            f"{adapter_dir}: this adapter is already merged into model.name={base_name}; load that full model "
            f"alone: --weights {full}"
        )
    where = (
        f"load the full model instead: --weights {full}"
        if full is not None
        else "its trained base was not saved with it (a checkpoint); finish the run (--resume) and use best_model/"
    )
    return TrainedBaseError(
        f"{adapter_dir}: this adapter was trained together with its base model (training.train_base_model: true), "
        f"so on model.name={base_name} it gives wrong results; {where} "
        f"(or --set {OVERRIDE_KEY}=true to apply it anyway)"
    )
