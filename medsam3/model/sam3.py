"""Base SAM3 (transformers) + processor, LoRA from the config (PEFT), and the device to run on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Sam3Config, Sam3Model, Sam3Processor

from ..config import LoraConfigSection, ModelConfig
from .lora_targets import select_lora_targets

__all__ = ["ModelLoadError", "add_lora", "build_lora_config", "load_base_model", "resolve_device", "unwrap"]

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The base SAM3 checkpoint could not be loaded (missing, not SAM3, or unreachable)."""


def resolve_device(spec: str | None) -> torch.device:
    """``auto``/None -> CUDA if present else CPU; a CUDA request without CUDA is an error, not a silent fallback."""
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"device {spec!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available here; use --device cpu")
    return device


def load_base_model(model_cfg: ModelConfig) -> tuple[Sam3Model, Sam3Processor]:
    """Load SAM3 and its processor from a local directory or the hub (``model.name``)."""
    name = model_cfg.name
    local = Path(name).expanduser()
    is_local = local.is_dir()
    if not is_local and (name.startswith((".", "/", "~")) or local.suffix):
        raise ModelLoadError(f"model.name={name!r}: no such directory (give a local SAM3 checkpoint dir or a hub id)")
    if is_local and not (local / "config.json").is_file():
        raise ModelLoadError(f"model.name={name!r}: directory has no config.json; it is not a transformers checkpoint")
    source = str(local) if is_local else name
    kwargs = {} if is_local else {"cache_dir": model_cfg.cache_dir, "revision": model_cfg.revision}
    try:
        if model_cfg.resolution is not None:
            # The ViT's global-attention positions are built from config.image_size: set it before building.
            config = Sam3Config.from_pretrained(source, **kwargs)
            config.image_size = model_cfg.resolution
            kwargs_model = {**kwargs, "config": config}
        else:
            kwargs_model = kwargs
        model = Sam3Model.from_pretrained(source, **kwargs_model)
        processor = Sam3Processor.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load SAM3 from {source!r}: {exc}. If you are offline, point model.name at a local copy "
            f"or warm the cache (hf download {source}); facebook/sam3 is gated: run `hf auth login` after "
            f"requesting access on its model page."
        ) from exc
    if model.config.model_type not in ("sam3", "sam3_video"):
        raise ModelLoadError(f"{source!r} is a {model.config.model_type!r} checkpoint, not SAM3")
    if model_cfg.resolution is not None:
        processor.image_processor.size = {"height": model_cfg.resolution, "width": model_cfg.resolution}
    return model.eval(), processor


def build_lora_config(
    model: torch.nn.Module, lora: LoraConfigSection, rank: int | None = None, alpha: float | None = None
) -> LoraConfig:
    """PEFT config whose targets are the exact module names selected by upstream's rules."""
    targets = select_lora_targets(model.named_modules(), lora)
    if not targets:
        raise ValueError(
            f"lora.target_modules={lora.target_modules} with the enabled components matched no layer; "
            f"see the README table of target names"
        )
    return LoraConfig(
        r=rank if rank is not None else lora.rank,
        lora_alpha=alpha if alpha is not None else lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
    )


def add_lora(
    model: Sam3Model, lora: LoraConfigSection, rank: int | None = None, alpha: float | None = None
) -> PeftModel:
    """Wrap the configured layers with fresh LoRA adapters (B = 0, so outputs are unchanged)."""
    peft_model = get_peft_model(model, build_lora_config(model, lora, rank, alpha))
    logger.info(
        "LoRA on %d layers, rank %s, alpha %s",
        len(peft_model.peft_config["default"].target_modules),
        peft_model.peft_config["default"].r,
        peft_model.peft_config["default"].lora_alpha,
    )
    return peft_model


def unwrap(model: torch.nn.Module) -> Sam3Model:
    """The Sam3Model inside a PeftModel (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
