"""Base SAM3 (transformers) + processor, LoRA from the config (PEFT), and the device to run on."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import Sam3Config, Sam3Model, Sam3Processor

from ..config import LoraConfigSection, ModelConfig
from ..errors import UserError
from .lora_targets import select_lora_targets

__all__ = [
    "ModelLoadError",
    "add_lora",
    "build_lora_config",
    "count_lora_layers",
    "load_base_model",
    "load_processor",
    "resolve_device",
    "unwrap",
]

logger = logging.getLogger(__name__)


class ModelLoadError(UserError, RuntimeError):
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


def _source(model_cfg: ModelConfig, local_files_only: bool) -> tuple[str, bool, dict]:
    """(what to pass to from_pretrained, is it a local dir, its keyword arguments); bad paths raise."""
    name = model_cfg.name
    local = Path(name).expanduser()
    is_local = local.is_dir()
    if not is_local and (name.startswith((".", "/", "~")) or local.suffix):
        raise ModelLoadError(f"model.name={name!r}: no such directory (give a local SAM3 checkpoint dir or a hub id)")
    if is_local and not (local / "config.json").is_file():
        raise ModelLoadError(f"model.name={name!r}: directory has no config.json; it is not a transformers checkpoint")
    kwargs = (
        {}
        if is_local
        else {"cache_dir": model_cfg.cache_dir, "revision": model_cfg.revision, "local_files_only": local_files_only}
    )
    return (str(local) if is_local else name), is_local, kwargs


def _load_error(source: str, is_local: bool, exc: Exception) -> ModelLoadError:
    reason = " ".join(str(exc).split()).rstrip(".")
    hint = (
        "check that the directory holds a complete SAM3 checkpoint (config.json, model.safetensors, processor files)"
        if is_local
        else f"warm the cache where the hub is reachable (medsam3-download --set model.name={source}) or point "
        f"model.name at a local copy; gated repositories (facebook/sam3) need access requested on their page "
        f"and `hf auth login`"
    )
    return ModelLoadError(f"could not load SAM3 from {source!r} ({reason}); {hint}")


def load_processor(model_cfg: ModelConfig, local_files_only: bool = False) -> Sam3Processor:
    """The processor alone (a few small files): training reads the input size from it before the model loads."""
    source, is_local, kwargs = _source(model_cfg, local_files_only)
    try:
        processor = Sam3Processor.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _load_error(source, is_local, exc) from exc
    if model_cfg.resolution is not None:
        processor.image_processor.size = {"height": model_cfg.resolution, "width": model_cfg.resolution}
    return processor


def load_base_model(
    model_cfg: ModelConfig, local_files_only: bool = False, processor: Sam3Processor | None = None
) -> tuple[Sam3Model, Sam3Processor]:
    """Load SAM3 and its processor from a local directory or the hub (``model.name``).

    ``local_files_only``: the hub was found unusable beforehand (see :mod:`medsam3.adapters.hub`), so
    the cache is read without trying the network (no timeouts, no retries). ``processor``: one
    already loaded by :func:`load_processor` from the same ``model_cfg``.
    """
    source, is_local, kwargs = _source(model_cfg, local_files_only)
    try:
        if model_cfg.resolution is not None:
            # The ViT's global-attention positions are built from config.image_size: set it before building.
            config = Sam3Config.from_pretrained(source, **kwargs)
            config.image_size = model_cfg.resolution
            kwargs_model = {**kwargs, "config": config}
        else:
            kwargs_model = kwargs
        model = Sam3Model.from_pretrained(source, **kwargs_model)
    except OSError as exc:
        raise _load_error(source, is_local, exc) from exc
    if model.config.model_type not in ("sam3", "sam3_video"):
        raise ModelLoadError(f"{source!r} is a {model.config.model_type!r} checkpoint, not SAM3")
    if processor is None:
        processor = load_processor(model_cfg, local_files_only)
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
    config = build_lora_config(model, lora, rank, alpha)
    with warnings.catch_warnings():
        # PEFT's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` property:
        # PEFT's call, not ours, so only that one FutureWarning is filtered, only here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    logger.info("LoRA on %d layers, rank %s, alpha %s", count_lora_layers(peft_model), config.r, config.lora_alpha)
    return peft_model


def count_lora_layers(model: torch.nn.Module) -> int:
    """LoRA-wrapped layers actually in ``model`` (PEFT may store target_modules compressed to suffixes)."""
    return sum(isinstance(m, LoraLayer) for m in model.modules())


def unwrap(model: torch.nn.Module) -> Sam3Model:
    """The Sam3Model inside a PeftModel (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
