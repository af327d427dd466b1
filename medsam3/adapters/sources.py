"""What a run loads, settled before anything heavy: which base model, which adapter, from where.

``--weights`` / ``model.lora_weights`` accepts
- ``none``: plain SAM3;
- nothing (null): upstream's auto-detect, ``<output.output_dir>/best_lora_weights*``; when that
  adapter's run also trained the base (``training.train_base_model``), the full model saved with it
  (``best_model/``) is loaded instead, with no adapter (see :mod:`.provenance`);
- a local PEFT adapter directory, a ``.safetensors`` file, or an upstream MedSAM3 ``.pt``;
- a full model directory (``best_model/``): loaded as the base, with no adapter;
- a hub reference ``owner/repo[:file][@revision]`` (see :mod:`.hub`);
- ``demo``: the small SAM3 shipped in ``medsam3/demo/`` (see :mod:`.concepts`).

No torch here: the run plan (:mod:`.plan`) calls :func:`resolve_sources` right after the config is
read, so a missing file or a refused adapter is reported before torch and transformers are imported.
This is the one auto-detection rule: concepts and thresholds are read from what it resolves.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from .concepts import demo_config, is_demo
from .errors import AdapterError
from .provenance import (
    base_was_trained,
    full_model_for,
    is_full_model_dir,
    read_training_metadata,
    refuse_other_base,
)

__all__ = ["AUTO_NAMES", "Sources", "find_trained_adapter", "resolve_sources"]

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
            return candidate
    raise AdapterError(
        f"no adapter given and none found in output.output_dir={output_dir} (looked for best_lora_weights*, "
        f"last_lora_weights*); pass --weights PATH_OR_HUB_ID, or --weights none for plain SAM3"
    )


@dataclass(frozen=True)
class Sources:
    cfg: Config
    """The config to load with: ``model.name`` is the full model when one replaced the adapter."""
    adapter: str
    """Adapter source (local path or hub reference), or ``"none"``."""
    full_model: Path | None = None
    """The full model loaded as the base instead of an adapter, if any."""
    note: str | None = None
    """What was decided, for the log (auto-detection, a full model)."""


def resolve_sources(cfg: Config, weights: str | None = None) -> Sources:
    """Settle demo, auto-detection and trained-base adapters; an adapter refused here raises ``TrainedBaseError``."""
    source = weights if weights is not None else cfg.model.lora_weights
    if is_demo(source):  # the shipped offline demo model (+ a shipped adapter for demo:NAME)
        cfg, source = demo_config(cfg, source)
    if source is not None and str(source).lower() == "none":
        return Sources(cfg, "none")
    _check_local_base(cfg)
    auto = source is None
    if not auto and _looks_local(str(source)) and not Path(str(source)).expanduser().exists():
        raise AdapterError(
            f"--weights / model.lora_weights {source}: no such file or folder (a local path, so the hub is not asked); "
            f"check the path, or give a hub id owner/repo, or --weights none for plain SAM3"
        )
    path = Path(str(find_trained_adapter(cfg.output.output_dir) if auto else source)).expanduser()
    if is_full_model_dir(path):
        return Sources(_with_base(cfg, path), "none", path, f"full model {path}: loaded as the base, no adapter")
    adapter_dir = path if path.is_dir() else path.parent
    meta = read_training_metadata(adapter_dir) if path.is_dir() or path.suffix == ".safetensors" else {}
    if base_was_trained(meta):
        if auto:
            full = full_model_for(adapter_dir, meta)
            note = f"auto-detected full model {full} (its run trained the base model too; {adapter_dir} is merged in)"
            return Sources(_with_base(cfg, full), "none", full, note)
        if not cfg.model.ignore_trained_base:
            raise refuse_other_base(adapter_dir, meta, cfg.model.name)
        logger.warning(
            "%s was trained together with its base model; applying it to %s anyway (model.ignore_trained_base)",
            adapter_dir,
            cfg.model.name,
        )
    return Sources(cfg, str(path) if auto else str(source), None, f"auto-detected adapter {path}" if auto else None)


def _looks_local(source: str) -> bool:
    """A path, not a hub id: starts like one, or names an adapter file (``.pt``, ``.safetensors``)."""
    return source.startswith((".", "/", "~")) or Path(source.split("@")[0]).suffix in (".pt", ".safetensors", ".json")


def _check_local_base(cfg: Config) -> None:
    """A ``model.name`` that is a local path must exist: said now, not after torch has loaded."""
    name = cfg.model.name
    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise AdapterError(
            f"model.name={name}: no such model folder (a local path, so the hub is not asked); point it at a "
            f"folder with config.json and model.safetensors, or at a hub id such as facebook/sam3"
        )


def _with_base(cfg: Config, model_dir: Path) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(model_dir)))
