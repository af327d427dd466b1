"""The run plan: every decision about *what* a command loads, made once, before torch is imported.

From a config and the command-line flags, :func:`plan_run` settles

- the base model and the adapter (or full model), by the one auto-detection rule of
  :func:`medsam3.adapters.sources.resolve_sources`;
- the detection threshold: ``--threshold`` > the value recorded by the adapter > the value
  recorded by the base model > 0.5, plus per-concept values where the metadata records them;
- the concepts the model and adapter were trained on (an empty vocabulary = open vocabulary);
- the 3D clean-up the weights record (concepts that keep their largest connected component);
- the device and precision (flag > ``hardware.*``);
- whether the hub is usable (one probe per run; offline reads the cache only).

Every command (infer, batch, volume, video, evaluate, app, download) builds one plan and hands
it on (:meth:`medsam3.inference.predictor.Predictor.from_plan`,
:func:`medsam3.adapters.loading.load_model`), so no later step works any of this out again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import UserError
from .concepts import prompt_warnings
from .errors import AdapterError
from .hub import prepare_hub
from .provenance import ADAPTER_METADATA, MODEL_METADATA
from .sources import Sources, resolve_sources

__all__ = [
    "DEFAULT_THRESHOLD",
    "RecordedMetadata",
    "RunPlan",
    "UnknownConceptError",
    "plan_run",
    "read_concepts",
    "read_recorded",
    "recorded_threshold",
    "trained_concepts",
]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
"""SAM3's own operating point: used when neither the flag nor the weights say otherwise."""


def _concept_key(text: str) -> str:
    """How prompts and recorded concepts are compared: case and spacing do not matter."""
    return " ".join(text.split()).lower()


class UnknownConceptError(AdapterError):
    """A prompt outside the concepts the model was trained on, without ``--allow-unknown``."""


@dataclass(frozen=True)
class RecordedMetadata:
    """What medsam3's training wrote beside a model or adapter (``medsam3_model.json`` / ``medsam3_adapter.json``)."""

    concepts: tuple[str, ...] = ()
    threshold: float | None = None
    concept_thresholds: dict[str, float] = field(default_factory=dict)
    largest_component: tuple[str, ...] | None = None
    """Concepts whose 3D masks keep their largest connected component (None: not recorded)."""


def _string_list(meta: dict, key: str, path: Path) -> list[str] | None:
    listed = meta.get(key)
    if listed is None:
        return None
    if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
        raise AdapterError(f"{path}: {key!r} must be a list of strings; fix or delete the file")
    return listed


def _threshold_value(value: object, path: Path, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise AdapterError(f"{path}: {key} must be a number in [0, 1], got {value!r}; fix or delete the file")
    return float(value)


def read_recorded(directory: str | Path) -> RecordedMetadata:
    """Concepts and thresholds recorded in ``directory`` (nothing recorded -> empty metadata).

    Both metadata files are read when present; the adapter's record wins over a full model's in the
    same folder. A file that is there but unreadable is an error, not "no metadata": a silently
    dropped threshold would change every result.
    """
    directory = Path(directory)
    concepts: list[str] = []
    threshold: float | None = None
    per_concept: dict[str, float] = {}
    largest: tuple[str, ...] | None = None
    for name in (MODEL_METADATA, ADAPTER_METADATA):
        path = directory / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterError(f"{path}: unreadable training metadata ({exc}); restore it or delete it") from exc
        if not isinstance(meta, dict):
            raise AdapterError(f"{path}: expected a JSON object; restore it from the training output or delete it")
        for key in ("concepts", "base_concepts"):
            concepts += _string_list(meta, key, path) or []
        recorded_largest = _string_list(meta, "largest_component", path)
        largest = tuple(recorded_largest) if recorded_largest is not None else largest
        recorded = _threshold_value(meta.get("threshold"), path, "threshold")
        threshold = recorded if recorded is not None else threshold
        table = meta.get("concept_thresholds") or {}
        if not isinstance(table, dict):
            raise AdapterError(f"{path}: 'concept_thresholds' must map concept -> threshold; fix or delete the file")
        for concept, value in table.items():
            per_concept[str(concept)] = _threshold_value(value, path, f"concept_thresholds[{concept!r}]")
    return RecordedMetadata(tuple(dict.fromkeys(concepts)), threshold, per_concept, largest)


@dataclass(frozen=True)
class RunPlan:
    """What a run loads and how it decides; built by :func:`plan_run`, read by every later step."""

    sources: Sources
    """Base model (``sources.cfg.model.name``), adapter source or ``"none"``, full model, auto-detection note."""
    threshold: float
    threshold_source: str
    """Where :attr:`threshold` came from: ``--threshold``, the metadata file that recorded it, or the default."""
    concept_thresholds: dict[str, float]
    """Per-concept thresholds recorded at training time (``--threshold`` overrides them all)."""
    concepts: dict[str, list[str]]
    """``{model or adapter folder: concepts it was trained on}``; empty: an open vocabulary."""
    device: str
    precision: str
    hub_offline: bool
    """True: read the hub cache only (offline or unreachable)."""
    largest_component: tuple[str, ...] = ()
    """Concepts (as recorded) whose 3D masks keep their largest connected component unless a flag says otherwise."""

    @property
    def cfg(self) -> Config:
        """The config to load with (``model.name`` is the full model when one replaced the adapter)."""
        return self.sources.cfg

    @property
    def adapter(self) -> str:
        return self.sources.adapter

    @property
    def vocabulary(self) -> list[str]:
        """Every recorded concept, in order, once."""
        return list(dict.fromkeys(c for concepts in self.concepts.values() for c in concepts))

    def unknown_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts outside the recorded vocabulary (none when nothing is recorded: an open vocabulary)."""
        known = {_concept_key(c) for c in self.vocabulary}
        return [p for p in prompts if known and _concept_key(p) not in known]

    def check_prompts(self, prompts: list[str], allow_unknown: bool = False) -> list[str]:
        """Refuse prompts outside a recorded vocabulary, naming the closest known concepts, unless allowed.

        A model trained on a closed list of concepts answers any other text with its nearest concept
        (the demo labels the liver "pancreas" with a high score), so by default such a prompt is not
        run. With ``allow_unknown`` the returned warnings are logged and the outputs mark the prompt.
        """
        unknown = self.unknown_prompts(prompts)
        if not unknown:
            return []
        messages = prompt_warnings(unknown, self.concepts)
        if not allow_unknown:
            raise UnknownConceptError(
                "; ".join(messages) + "; its result would be another concept's mask under this name. "
                "Use a known concept, or --allow-unknown to run it anyway (marked 'unknown concept' in every output)"
            )
        return [m + "; run anyway (--allow-unknown), marked 'unknown concept' in the outputs" for m in messages]

    def threshold_for(self, prompt: str) -> float:
        """The threshold for one prompt: the per-concept record unless ``--threshold`` was given."""
        if self.threshold_source == "--threshold":
            return self.threshold
        return self.concept_thresholds.get(_concept_key(prompt), self.threshold)

    def largest_component_for(self, prompt: str) -> bool:
        """Whether the weights record the largest-component clean-up for this prompt's concept."""
        return _concept_key(prompt) in {_concept_key(c) for c in self.largest_component}

    def with_concept_thresholds(self, overrides: dict[str, float], default: float | None = None) -> RunPlan:
        """The plan with ``overrides`` (concept -> threshold) on top of the recorded table; ``default``, when
        given, replaces the threshold and the recorded table (as ``--threshold`` does) before the overrides."""
        for concept, value in overrides.items():
            if not 0.0 <= value <= 1.0:
                raise AdapterError(f"threshold for {concept!r} must be in [0, 1], got {value:g}")
        table = {} if default is not None else dict(self.concept_thresholds)
        table.update({_concept_key(k): float(v) for k, v in overrides.items()})
        return dataclasses.replace(
            self,
            threshold=self.threshold if default is None else float(default),
            threshold_source=self.threshold_source if default is None else "--thresholds",
            concept_thresholds=table,
        )

    def with_hub_checked(self) -> RunPlan:
        """The plan after the one hub probe (:func:`~medsam3.adapters.hub.prepare_hub`): what is missing, said now."""
        return dataclasses.replace(self, hub_offline=prepare_hub(self.cfg, self.adapter))

    def describe(self) -> str:
        """One log line: base, adapter, threshold and its origin."""
        adapter = "none (plain model)" if self.adapter == "none" else self.adapter
        return (
            f"model {self.cfg.model.name}, adapter {adapter}, threshold {self.threshold:g} ({self.threshold_source}), "
            f"device {self.device}, precision {self.precision}"
        )


def _check_device(device: str) -> None:
    """A CUDA device on a machine without an NVIDIA driver is refused now, before torch loads (seconds).

    Where the driver is there, torch decides later (a CPU-only torch build, a missing index).
    """
    if not sys.platform.startswith("linux"):  # the driver check below is Linux's; elsewhere torch decides
        return
    if str(device).strip().lower().startswith("cuda") and not (
        Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
    ):
        raise UserError(f"--device {device}: no NVIDIA GPU or driver on this machine; use --device cpu (or auto)")


def _metadata_dirs(sources: Sources) -> list[Path]:
    """Folders whose metadata describe what is loaded, base first (so the adapter's record wins)."""
    dirs = []
    base = Path(sources.cfg.model.name).expanduser()
    if base.is_dir():
        dirs.append(base)
    if sources.adapter.lower() != "none":
        path = Path(sources.adapter).expanduser()
        folder = path if path.is_dir() else path.parent
        if path.exists() and folder.is_dir() and folder not in dirs:
            dirs.append(folder)
    return dirs


def plan_run(
    cfg: Config,
    weights: str | None = None,
    *,
    threshold: float | None = None,
    device: str | None = None,
    precision: str | None = None,
    check_hub: bool = True,
) -> RunPlan:
    """Decide everything about what a run loads, once; raises a one-line ``UserError`` for what cannot work.

    ``weights`` is ``--weights`` (None: ``model.lora_weights``, else auto-detection). ``check_hub=False``
    skips the hub probe (``--list-concepts`` only reads local metadata).
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise AdapterError(f"--threshold must be in [0, 1], got {threshold:g}")
    sources = resolve_sources(cfg, weights)
    concepts: dict[str, list[str]] = {}
    recorded_value: float | None = None
    recorded_from = ""
    per_concept: dict[str, float] = {}
    largest: tuple[str, ...] = ()
    for folder in _metadata_dirs(sources):
        meta = read_recorded(folder)
        if meta.concepts:
            concepts[str(folder)] = list(meta.concepts)
        if meta.threshold is not None:
            recorded_value, recorded_from = meta.threshold, f"recorded in {folder}"
        if meta.threshold is not None:  # a later (adapter) record wins over the base's, table and all
            per_concept = {}
        per_concept.update({_concept_key(k): v for k, v in meta.concept_thresholds.items()})
        if meta.largest_component is not None:  # an adapter that records its own clean-up replaces the base's
            largest = meta.largest_component
    if threshold is not None:
        chosen, origin = float(threshold), "--threshold"
    elif recorded_value is not None:
        chosen, origin = recorded_value, recorded_from
    else:
        chosen, origin = DEFAULT_THRESHOLD, "default"
    device = device or sources.cfg.hardware.device
    _check_device(device)
    hub_offline = prepare_hub(sources.cfg, sources.adapter) if check_hub else True
    plan = RunPlan(
        sources=sources,
        threshold=chosen,
        threshold_source=origin,
        concept_thresholds={} if threshold is not None else per_concept,  # --threshold overrides them all
        concepts=concepts,
        device=device,
        precision=precision or sources.cfg.hardware.precision,
        hub_offline=hub_offline,
        largest_component=largest,
    )
    return plan


def read_concepts(directory: str | Path) -> list[str]:
    """Concepts recorded in a model or adapter directory (empty when none were recorded)."""
    return list(read_recorded(directory).concepts)


def trained_concepts(cfg: Config, weights: str | None = None) -> dict[str, list[str]]:
    """``{source: concepts}`` for what ``cfg``/``weights`` load (the plan's rule, without the hub probe)."""
    return plan_run(cfg, weights, check_hub=False).concepts


def recorded_threshold(cfg: Config, weights: str | None = None) -> float:
    """The threshold a run without ``--threshold`` uses (the plan's rule, without the hub probe)."""
    return plan_run(cfg, weights, check_hub=False).threshold
