"""Where the LoRA adapter comes from: a path, the training output dir, the hub, or nowhere.

``--weights`` / ``model.lora_weights`` accepts
- ``none``: plain SAM3;
- nothing (null): upstream's auto-detect, ``<output.output_dir>/best_lora_weights*``;
- a local PEFT adapter directory, a ``.safetensors`` file, or an upstream MedSAM3 ``.pt``;
- a hub reference ``owner/repo[:file][@revision]`` (see :mod:`medsam3.adapters.hub`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import Sam3Processor

from ..config import Config
from ..model import load_base_model
from .peft_format import AdapterError, AdapterWeights, apply_adapter, read_peft_adapter

__all__ = ["AUTO_NAMES", "find_trained_adapter", "load_model", "read_adapter"]

logger = logging.getLogger(__name__)

# What training writes, then what upstream wrote, in order of preference.
AUTO_NAMES = (
    "best_lora_weights",
    "best_lora_weights.safetensors",
    "best_lora_weights.pt",
    "last_lora_weights",
    "last_lora_weights.safetensors",
    "last_lora_weights.pt",
)


def find_trained_adapter(output_dir: str | Path) -> Path:
    """Upstream's auto-detect: the best (else last) adapter in the training output directory."""
    output_dir = Path(output_dir)
    for name in AUTO_NAMES:
        candidate = output_dir / name
        if candidate.exists():
            logger.info("auto-detected adapter %s", candidate)
            return candidate
    raise AdapterError(
        f"no adapter given and none found in output.output_dir={output_dir} (looked for best_lora_weights*, "
        f"last_lora_weights*); pass --weights PATH_OR_HUB_ID, or --weights none for plain SAM3"
    )


def _looks_like_hub_ref(source: str) -> bool:
    base = source.split("@")[0].split(":")[0]
    return base.count("/") == 1 and not Path(base).exists() and not source.startswith((".", "/", "~"))


def read_adapter(source: str | Path, cache_dir: str | None = None) -> AdapterWeights:
    """Read adapter weights from any supported local format or a hub reference."""
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists() and _looks_like_hub_ref(text):
        from .hub import download_adapter  # imported lazily: only hub users need the network layer

        path = download_adapter(text, cache_dir=cache_dir)
    if not path.exists():
        raise AdapterError(f"{text}: adapter not found (expected a file, a PEFT directory or owner/repo on the hub)")
    if path.is_file() and path.suffix == ".pt":
        from .upstream import read_upstream_adapter

        return read_upstream_adapter(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return read_peft_adapter(path)
    raise AdapterError(f"{path}: unsupported adapter format {path.suffix!r}; use .pt, .safetensors or a PEFT dir")


def load_model(cfg: Config, weights: str | None = None) -> tuple[torch.nn.Module, Sam3Processor, str]:
    """Base SAM3 plus the adapter selected by ``weights`` (else ``model.lora_weights``, else auto-detect).

    Returns the model (a PeftModel when an adapter is loaded), the processor, and a short
    description of the adapter for logs and result files.
    """
    source = weights if weights is not None else cfg.model.lora_weights
    adapter = None
    if source is None or str(source).lower() != "none":
        # Read (and validate) the adapter before the multi-GB base model, so a bad path fails fast.
        adapter = read_adapter(
            source if source is not None else find_trained_adapter(cfg.output.output_dir), cache_dir=cfg.model.cache_dir
        )
    model, processor = load_base_model(cfg.model)
    if adapter is None:
        return model, processor, "none (plain SAM3)"
    return apply_adapter(model, cfg.lora, adapter).eval(), processor, adapter.origin
