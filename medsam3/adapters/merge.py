"""Fold a LoRA adapter into the base weights: a plain transformers SAM3 checkpoint.

The result loads with ``Sam3Model.from_pretrained`` (no PEFT needed) and runs at base speed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft import PeftModel

from ..config import Config
from ..errors import UserError
from .loading import load_model

__all__ = ["merge_adapter"]

logger = logging.getLogger(__name__)


def merge_adapter(cfg: Config, weights: str, out_dir: str | Path) -> Path:
    """Base model (``model.name``) + ``weights`` -> merged checkpoint + processor in ``out_dir``."""
    model, processor, origin = load_model(cfg, weights)
    if not isinstance(model, PeftModel):
        raise UserError("nothing to merge: weights=none gives plain SAM3")
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("merged %s into %s -> %s", origin, cfg.model.name, out_dir)
    return out_dir
