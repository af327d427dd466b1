"""What a model or adapter was trained on, and the shipped offline demo model.

Training writes the concepts (text prompts) it saw into ``medsam3_adapter.json`` beside every
adapter and into ``medsam3_model.json`` beside every full model. ``infer_sam.py --list-concepts``
prints them, and a prompt outside them is refused (or, with ``--allow-unknown``, run and marked)
with a message naming the closest known concepts (``difflib``): a model only knows the words it was
trained on (see :meth:`medsam3.adapters.plan.RunPlan.check_prompts`).

``--weights demo`` selects the small SAM3 trained here on CT and MR of many subjects
(``medsam3/demo/``, see its ``MODEL.md``): no hub access needed. ``--weights demo:NAME`` adds the
shipped LoRA adapter ``medsam3/demo/adapters/NAME`` (``demo:hc18`` fetal ultrasound, ``demo:ph2``
dermoscopy) to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from pathlib import Path

from ..config import Config
from ..errors import InputNotFoundError
from .provenance import ADAPTER_METADATA, MODEL_METADATA

__all__ = [
    "ADAPTER_METADATA",
    "DEMO_DIR",
    "MODEL_METADATA",
    "demo_adapters",
    "demo_config",
    "demo_weights_values",
    "is_demo",
    "prompt_warnings",
]

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEMO_MODEL = DEMO_DIR / "model"
DEMO_ADAPTERS = DEMO_DIR / "adapters"


def _demo_parts(source: str | Path | None) -> tuple[bool, str | None]:
    """(is a demo value, adapter name or None) for ``demo`` / ``demo:NAME``."""
    if source is None:
        return False, None
    text = str(source).strip()
    head, sep, name = text.partition(":")
    if head.lower() != "demo":
        return False, None
    return True, (name.strip() if sep else None)


def is_demo(source: str | Path | None) -> bool:
    """True for ``demo`` and ``demo:NAME`` (the shipped base, alone or with one of its adapters)."""
    return _demo_parts(source)[0]


def demo_adapters() -> list[str]:
    """Names of the LoRA adapters shipped with the demo model (``--weights demo:NAME``)."""
    if not DEMO_ADAPTERS.is_dir():
        return []
    return sorted(d.name for d in DEMO_ADAPTERS.iterdir() if (d / "adapter_config.json").is_file())


def demo_weights_values() -> list[str]:
    """Every ``--weights`` value the demo ships: ``demo`` and ``demo:NAME`` per adapter."""
    return ["demo", *(f"demo:{name}" for name in demo_adapters())]


def demo_config(cfg: Config, source: str | Path = "demo") -> tuple[Config, str]:
    """``cfg`` with the shipped demo model as base, and ``source``'s adapter (``demo:NAME``) as weights.

    Returns the new config and the ``weights`` value to load (a PEFT dir, or ``"none"`` for ``demo``).
    """
    if not (DEMO_MODEL / "config.json").is_file():
        raise InputNotFoundError(f"the demo model is not installed ({DEMO_MODEL} is missing); reinstall medsam3")
    _, name = _demo_parts(source)
    model = dataclasses.replace(cfg.model, name=str(DEMO_MODEL), resolution=None, lora_weights=None)
    lora, weights = cfg.lora, "none"
    if name is not None:
        adapter = DEMO_ADAPTERS / name
        if not name or name not in demo_adapters():
            raise InputNotFoundError(
                f"--weights {source}: no demo adapter {name!r}; the demo ships: {', '.join(demo_weights_values())}"
            )
        meta = json.loads((adapter / "adapter_config.json").read_text())
        lora = dataclasses.replace(cfg.lora, rank=int(meta["r"]), alpha=float(meta["lora_alpha"]))
        weights = str(adapter)
    return dataclasses.replace(cfg, model=model, lora=lora), weights


def prompt_warnings(prompts: list[str], known: dict[str, list[str]]) -> list[str]:
    """One message per prompt that none of ``known``'s sources was trained on (nothing if none are known)."""
    vocabulary = sorted({c for concepts in known.values() for c in concepts})
    if not vocabulary:
        return []
    lower = {c.lower(): c for c in vocabulary}
    messages = []
    for prompt in prompts:
        if prompt.strip().lower() in lower:
            continue
        close = difflib.get_close_matches(prompt.strip().lower(), list(lower), n=3, cutoff=0.5)
        if close:
            hint = f"closest: {', '.join(repr(lower[c]) for c in close)}"
        else:  # nothing alike: say what it does know
            shown = ", ".join(repr(c) for c in vocabulary[:12])
            hint = f"known concepts: {shown}" + (
                f" and {len(vocabulary) - 12} more (--list-concepts)" if len(vocabulary) > 12 else ""
            )
        messages.append(f"prompt {prompt!r} is not a concept this model was trained on ({hint})")
    return messages
