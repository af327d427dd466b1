"""What a training run leaves behind besides checkpoints: named adapters, full models, their metadata.

``best_lora_weights/`` and ``last_lora_weights/`` are PEFT adapters; with ``train_base_model`` or
``save_lora_only: false`` a merged full model is written beside each (``best_model/``,
``last_model/``). The metadata says whether the base was trained and where the full model is, so
inference never applies such an adapter to a base it was not trained with (issue 16).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..adapters.peft_format import save_adapter
from ..adapters.plan import read_concepts
from ..adapters.provenance import MODEL_METADATA, full_model_name
from ..config import Config
from ..model import count_lora_layers
from ..outputs import atomic_path, write_json
from .checkpoint import atomic_dir

__all__ = ["drop_log_lines_after", "save_trained", "trained_metadata"]

logger = logging.getLogger(__name__)


def trained_metadata(
    cfg: Config,
    model: torch.nn.Module,
    concepts: list[str],
    step: int,
    resolution: int,
    full_model: str | None = None,
) -> dict[str, Any]:
    """What travels with every saved adapter; ``full_model``: the directory (beside it) of its full model."""
    return {
        "source": "medsam3 training",
        "step": step,
        # Loading reads these two: an adapter whose base was trained is right only inside its full model.
        "base_trained": cfg.training.train_base_model,
        "full_model": full_model,
        "lora_layers": count_lora_layers(model),
        "base_model": cfg.model.name,
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "concepts": concepts,
        # what the base was trained on before (a medsam3-trained base records it), for --list-concepts
        "base_concepts": read_concepts(cfg.model.name) if Path(cfg.model.name).is_dir() else [],
        "resolution": resolution,
    }


def save_trained(
    model: torch.nn.Module,
    processor: Any,
    directory: Path,
    metadata: Callable[..., dict[str, Any]],
    with_full_model: bool,
) -> None:
    """The adapter at ``directory`` (PEFT dir, what Predictor loads) and, if asked, the merged full model
    beside it. ``metadata(full_model=...)`` gives the metadata to record."""
    name = directory.name
    model_name = full_model_name(name) if with_full_model else None
    with atomic_dir(directory) as tmp:
        save_adapter(model, tmp, metadata=metadata(full_model=model_name))
    if model_name is None:
        return
    model_dir = directory.parent / model_name
    with atomic_dir(model_dir) as tmp:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        # What --list-concepts prints and what unknown prompts are checked against.
        write_json(
            {
                **metadata(),
                "source": "medsam3 training (full model)",
                "adapter": name,  # merged in: never load that adapter on top of this model
                "adapter_merged": True,
            },
            tmp / MODEL_METADATA,
        )
    logger.info("full model -> %s (load it with --weights %s)", model_dir, model_dir)


def drop_log_lines_after(log: Path, step: int) -> None:
    """On resume: lines the interrupted run wrote after its last checkpoint are replayed now, so drop them."""
    if not log.is_file():
        return
    kept = []
    for number, line in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # cut short by a kill or a full disk: it was after the checkpoint
            logger.warning("%s line %d is incomplete (an interrupted write); dropped", log, number)
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    with atomic_path(log) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
