"""LoRA adapters in and out: PEFT directories and safetensors files, loaded strictly.

Upstream loaded with ``strict=False``, so a mismatched adapter ran silently as plain SAM3.
Here every key of the file must land on a LoRA layer of the model and every LoRA layer must
be filled, or :class:`AdapterError` says which keys and how many.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import LoraConfigSection
from ..model import add_lora, count_lora_layers
from .errors import AdapterError
from .provenance import ADAPTER_METADATA, read_training_metadata

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_METADATA",
    "ADAPTER_WEIGHTS",
    "AdapterError",
    "AdapterWeights",
    "apply_adapter",
    "read_peft_adapter",
    "save_adapter",
    "tensor_rank",
]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_SHOW = 5


@dataclass
class AdapterWeights:
    """LoRA tensors keyed as PEFT saves them (``base_model.model.<module>.lora_A.weight``)."""

    state: dict[str, torch.Tensor]
    rank: int
    alpha: float | None
    origin: str
    rank_must_match_config: bool = True
    """PEFT adapters declare their rank: a different lora.rank is a config error. Upstream .pt files
    do not, and upstream's YAML often disagreed with its weights, so there the file's rank wins."""
    base_model: str | None = None
    metadata: dict = field(default_factory=dict)


def tensor_rank(state: dict[str, torch.Tensor]) -> int:
    """Rank from the tensors themselves (lora_A.weight is (r, in)); all layers must agree."""
    ranks = {t.shape[0] for k, t in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise AdapterError(
            f"adapter tensors disagree on the LoRA rank (found {sorted(ranks)}); the file is inconsistent"
        )
    return ranks.pop()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: not a readable safetensors file ({exc}); re-download or re-export it") from exc


def read_peft_adapter(path: str | Path) -> AdapterWeights:
    """Read a PEFT adapter directory or a bare ``.safetensors`` file of PEFT-named LoRA tensors."""
    path = Path(path)
    if path.is_dir():
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise AdapterError(f"{path}: no {ADAPTER_WEIGHTS} in this directory; is it a PEFT adapter directory?")
        config_file = path / ADAPTER_CONFIG
    elif path.is_file():
        weights, config_file = path, path.with_name(ADAPTER_CONFIG)
    else:
        raise AdapterError(f"{path}: adapter not found")
    state = _load_safetensors(weights)
    if not state:
        raise AdapterError(f"{weights}: holds no tensors")
    bad = [k for k in state if ".lora_A." not in k and ".lora_B." not in k]
    if bad:
        raise AdapterError(
            f"{weights}: {len(bad)} keys are not PEFT LoRA weights (e.g. {bad[:_SHOW]}); "
            f"for an upstream MedSAM3 file use its .pt, for a merged model use model.name"
        )
    rank = tensor_rank(state)
    alpha = None
    base_model = None
    declared = False
    if config_file.is_file():
        try:
            meta = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterError(f"{config_file}: not valid JSON ({exc}); re-export the adapter") from exc
        if not isinstance(meta, dict):
            raise AdapterError(
                f"{config_file}: expected a JSON object (PEFT's adapter config), got {type(meta).__name__}"
            )
        declared = True
        alpha = meta.get("lora_alpha")
        base_model = meta.get("base_model_name_or_path")
        if meta.get("r") not in (None, rank):
            raise AdapterError(f"{config_file}: says r={meta.get('r')} but the tensors have rank {rank}")
    return AdapterWeights(
        state=state,
        rank=rank,
        alpha=alpha,
        origin=str(path),
        rank_must_match_config=declared,
        base_model=base_model,
        metadata=read_training_metadata(weights.parent),
    )


def _layers(keys) -> list[str]:
    """Module names of PEFT keys (one per layer, not per lora_A/lora_B tensor)."""
    return sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in keys})


def apply_adapter(model: torch.nn.Module, lora: LoraConfigSection, adapter: AdapterWeights) -> PeftModel:
    """Wrap ``model`` with LoRA as configured and fill it with ``adapter``, strictly."""
    if adapter.rank != lora.rank:
        if adapter.rank_must_match_config:
            raise AdapterError(
                f"{adapter.origin}: adapter rank is {adapter.rank} but the config says lora.rank={lora.rank}; "
                f"set lora.rank: {adapter.rank} (or --set lora.rank={adapter.rank})"
            )
        logger.warning(
            "%s: adapter rank is %d but lora.rank=%d; using the file's rank %d",
            adapter.origin,
            adapter.rank,
            lora.rank,
            adapter.rank,
        )
    alpha = adapter.alpha if adapter.alpha is not None else lora.alpha
    if adapter.alpha is not None and adapter.alpha != lora.alpha:
        logger.warning(
            "%s: adapter alpha is %s but lora.alpha=%s; using the adapter's", adapter.origin, adapter.alpha, lora.alpha
        )
    peft_model = add_lora(model, lora, rank=adapter.rank, alpha=alpha)
    # save_embedding_layers=False: we never put LoRA on embeddings, and "auto" looks the base model's
    # config up on the hub (a network call, and a warning offline).
    expected = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    missing = expected.keys() - adapter.state.keys()
    unexpected = adapter.state.keys() - expected.keys()
    if missing or unexpected:
        parts = [f"{adapter.origin}: adapter does not match the model's LoRA layers"]
        if unexpected:
            layers = _layers(unexpected)
            parts.append(
                f"{len(layers)} adapter layers ({len(unexpected)} tensors) have no LoRA layer in the model "
                f"(first: {layers[:_SHOW]})"
            )
        if missing:
            layers = _layers(missing)
            parts.append(
                f"{len(layers)} LoRA layers of the model ({len(missing)} tensors) are not in the adapter "
                f"(first: {layers[:_SHOW]})"
            )
        parts.append("check lora.target_modules and the apply_to_* flags against how the adapter was trained")
        raise AdapterError("; ".join(parts))
    wrong = [
        (k, tuple(adapter.state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if adapter.state[k].shape != v.shape
    ]
    if wrong:
        base = f" (adapter made for {adapter.base_model})" if adapter.base_model else ""
        raise AdapterError(
            f"{adapter.origin}: {len(wrong)} tensors have the wrong shape for this base model{base}, "
            f"first: {wrong[:3]} as (adapter, model); the adapter was trained on another SAM3 size"
        )
    result = set_peft_model_state_dict(peft_model, adapter.state)
    leftover = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if leftover:
        raise AdapterError(f"{adapter.origin}: PEFT did not place {len(leftover)} keys, e.g. {leftover[:_SHOW]}")
    # Counted as training counts them (add_lora), so the two logs agree.
    logger.info(
        "loaded adapter %s: %d LoRA layers, rank %d", adapter.origin, count_lora_layers(peft_model), adapter.rank
    )
    return peft_model


def save_adapter(peft_model: PeftModel, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (+ optional metadata JSON)."""
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)  # no hub look-up (see apply_adapter)
    if metadata:
        (out_dir / ADAPTER_METADATA).write_text(json.dumps(metadata, indent=2))
    return out_dir
