"""Base SAM3 plus the adapter a config or ``--weights`` selects: the one load entry.

What is loaded is settled first, without torch, by the run plan (:mod:`.plan`: auto-detection,
full models, trained-base adapters, the demo, whether the hub is usable); then the adapter is read and
validated, then the multi-GB base model loads, then the adapter is applied strictly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import Sam3Processor

from ..config import Config
from ..model import load_base_model
from .errors import AdapterError
from .hub import looks_like_hub_ref
from .peft_format import AdapterWeights, apply_adapter, read_peft_adapter
from .plan import RunPlan, plan_run
from .sources import AUTO_NAMES, find_trained_adapter

__all__ = ["AUTO_NAMES", "find_trained_adapter", "load_model", "read_adapter"]

logger = logging.getLogger(__name__)


def read_adapter(source: str | Path, cache_dir: str | None = None, local_files_only: bool = False) -> AdapterWeights:
    """Read adapter weights from any supported local format or a hub reference."""
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists() and looks_like_hub_ref(text):
        from .hub import download_adapter

        path = download_adapter(text, cache_dir=cache_dir, local_files_only=local_files_only)
    if not path.exists():
        raise AdapterError(f"{text}: adapter not found (expected a file, a PEFT directory or owner/repo on the hub)")
    if path.is_file() and path.suffix == ".pt":
        from .upstream import read_upstream_adapter

        return read_upstream_adapter(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return read_peft_adapter(path)
    raise AdapterError(f"{path}: unsupported adapter format {path.suffix!r}; use .pt, .safetensors or a PEFT dir")


def load_model(
    cfg: Config | None = None, weights: str | None = None, base_loader=None, plan: RunPlan | None = None
) -> tuple[torch.nn.Module, Sam3Processor, str]:
    """Base SAM3 plus the adapter the run plan names (built from ``cfg``/``weights`` when not given).

    ``base_loader(model_cfg, local_files_only=...) -> (module, processor)`` replaces
    :func:`~medsam3.model.load_base_model`; the video model passes one returning its detector, so
    adapters land there by the same rules (:mod:`medsam3.adapters.video`).

    Returns the model (a PeftModel when an adapter is loaded), the processor, and a short
    description of the adapter for logs and result files.
    """
    if plan is None:
        if cfg is None:
            raise TypeError("load_model needs a config or a run plan")
        plan = plan_run(cfg, weights)
    if plan.sources.note:
        logger.info("%s", plan.sources.note)
    cfg, source, full_model, local_only = plan.cfg, plan.adapter, plan.sources.full_model, plan.hub_offline
    adapter = None
    if str(source).lower() != "none":
        # Read (and validate) the adapter before the multi-GB base model, so a bad path fails fast.
        adapter = read_adapter(source, cache_dir=cfg.model.cache_dir, local_files_only=local_only)
    model, processor = (base_loader or load_base_model)(cfg.model, local_files_only=local_only)
    if adapter is None:
        if full_model:
            return model, processor, f"full model {full_model} (adapter merged in)"
        return model, processor, f"none (the base model {cfg.model.name} alone)"
    return apply_adapter(model, cfg.lora, adapter).eval(), processor, adapter.origin
