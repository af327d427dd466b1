"""Fold a LoRA adapter into the base weights: a plain transformers SAM3 checkpoint.

The result loads with ``Sam3Model.from_pretrained`` (no PEFT needed) and runs at base speed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from peft import PeftModel

from ..config import Config
from ..errors import UserError
from .loading import load_model
from .plan import plan_run
from .provenance import MODEL_METADATA

__all__ = ["merge_adapter"]

logger = logging.getLogger(__name__)


def merge_adapter(cfg: Config, weights: str, out_dir: str | Path) -> Path:
    """Base model (``model.name``) + ``weights`` -> merged checkpoint + processor in ``out_dir``.

    What the run plan read from the adapter and base (concepts, threshold, per-concept thresholds)
    is recorded in the merged model's ``medsam3_model.json``, so the merged model runs at the same
    threshold and with the same vocabulary as the adapter did.
    """
    plan = plan_run(cfg, weights)
    model, processor, origin = load_model(plan=plan)
    if not isinstance(model, PeftModel):
        raise UserError("nothing to merge: weights=none gives plain SAM3")
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    record = {
        "source": f"medsam3 merge of {origin} into {plan.cfg.model.name}",
        "adapter": origin,
        "adapter_merged": True,
        "concepts": plan.vocabulary,
        "threshold": plan.threshold if plan.threshold_source != "default" else None,
        "concept_thresholds": plan.concept_thresholds,
    }
    (out_dir / MODEL_METADATA).write_text(json.dumps(record, indent=1))
    logger.info("merged %s into %s -> %s", origin, cfg.model.name, out_dir)
    return out_dir
