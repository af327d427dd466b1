"""What a model or adapter was trained on, and the shipped offline demo model.

Training writes the concepts (text prompts) it saw into ``medsam3_adapter.json`` beside every
adapter and into ``medsam3_model.json`` beside every full model. ``infer_sam.py --list-concepts``
prints them, and a prompt outside them gets a warning naming the closest known concepts
(``difflib``): a model only knows the words it was trained on.

``--weights demo`` selects the small SAM3 trained here on real CT/MR slices from registry
packages (``medsam3/demo/``, see its ``MODEL.md``): no hub access needed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from pathlib import Path

from ..config import Config

__all__ = [
    "ADAPTER_METADATA",
    "DEMO_DIR",
    "MODEL_METADATA",
    "demo_config",
    "is_demo",
    "prompt_warnings",
    "read_concepts",
    "recorded_threshold",
    "trained_concepts",
]

logger = logging.getLogger(__name__)

ADAPTER_METADATA = "medsam3_adapter.json"
MODEL_METADATA = "medsam3_model.json"
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEMO_MODEL = DEMO_DIR / "model"
DEMO_ADAPTER = DEMO_DIR / "adapter"


def is_demo(source: str | Path | None) -> bool:
    return source is not None and str(source).strip().lower() == "demo"


def demo_config(cfg: Config) -> tuple[Config, str]:
    """``cfg`` with the shipped demo model as base and its adapter (if shipped) as weights.

    Returns the new config and the ``weights`` value to load (a PEFT dir or ``"none"``).
    """
    if not (DEMO_MODEL / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is not installed ({DEMO_MODEL} is missing); reinstall medsam3")
    model = dataclasses.replace(cfg.model, name=str(DEMO_MODEL), resolution=None, lora_weights=None)
    lora, weights = cfg.lora, "none"
    if (DEMO_ADAPTER / "adapter_config.json").is_file():
        meta = json.loads((DEMO_ADAPTER / "adapter_config.json").read_text())
        lora = dataclasses.replace(cfg.lora, rank=int(meta["r"]), alpha=float(meta["lora_alpha"]))
        weights = str(DEMO_ADAPTER)
    return dataclasses.replace(cfg, model=model, lora=lora), weights


def read_concepts(directory: str | Path) -> list[str]:
    """Concepts recorded in a model or adapter directory (empty when none were recorded)."""
    directory = Path(directory)
    for name in (MODEL_METADATA, ADAPTER_METADATA):
        path = directory / name
        if path.is_file():
            try:
                meta = json.loads(path.read_text())
                concepts = [str(c) for c in (meta.get("concepts") or []) + (meta.get("base_concepts") or [])]
                return list(dict.fromkeys(concepts))
            except (json.JSONDecodeError, AttributeError):
                logger.warning("%s: unreadable metadata; concepts unknown", path)
    return []


def trained_concepts(cfg: Config, weights: str | None = None) -> dict[str, list[str]]:
    """``{source: concepts}`` for the base model and the adapter ``cfg``/``weights`` select.

    Only local directories are read (a hub adapter's metadata is not fetched for this); sources
    without recorded concepts (facebook/sam3, upstream ``.pt`` files) are left out.
    """
    if is_demo(weights):
        cfg, weights = demo_config(cfg)
    found: dict[str, list[str]] = {}
    base = Path(cfg.model.name).expanduser()
    if base.is_dir() and read_concepts(base):
        found[str(base)] = read_concepts(base)
    source = weights if weights is not None else cfg.model.lora_weights
    if source is None:
        out = Path(cfg.output.output_dir)
        source = next((str(out / n) for n in ("best_lora_weights", "last_lora_weights") if (out / n).is_dir()), None)
    if source is not None and str(source).lower() != "none":
        path = Path(str(source)).expanduser()
        path = path if path.is_dir() else path.parent
        if path.is_dir() and read_concepts(path):
            found[str(path)] = read_concepts(path)
    return found


def recorded_threshold(cfg: Config, weights: str | None = None, default: float = 0.5) -> float:
    """The operating threshold a model records (``"threshold"`` in its metadata), else ``default``.

    A model trained briefly from scratch scores good masks lower than a large pretrained SAM3 (its
    class score converges to its box IoU); its card then records the threshold chosen on its
    validation split, never on test. The adapter's value wins over the base model's.
    """
    if is_demo(weights):
        cfg, weights = demo_config(cfg)
    value = None
    source = weights if weights is not None else cfg.model.lora_weights
    candidates = [Path(cfg.model.name).expanduser()]
    if source is not None and str(source).lower() != "none":
        candidates.append(Path(str(source)).expanduser())
    for directory in candidates:
        for name in (MODEL_METADATA, ADAPTER_METADATA):
            path = directory / name
            if directory.is_dir() and path.is_file():
                try:
                    found = json.loads(path.read_text()).get("threshold")
                except (json.JSONDecodeError, AttributeError):
                    found = None
                if isinstance(found, (int, float)) and 0.0 <= found <= 1.0:
                    value = float(found)
    if value is not None:
        logger.info("detection threshold %.2f (recorded by the model; --threshold overrides)", value)
        return value
    return default


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
        hint = f"closest: {', '.join(repr(lower[c]) for c in close)}" if close else "see --list-concepts"
        messages.append(f"prompt {prompt!r} is not a concept this model was trained on ({hint})")
    return messages
