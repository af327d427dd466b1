"""YAML configuration in upstream MedSAM3's schema, loaded into typed dataclasses.

Users edit YAML by hand, so every key is checked: an unknown key, a wrong type or an
out-of-range value raises :class:`ConfigError` naming the file, the dotted key and, for a
typo, the nearest valid key. ``--set section.key=value`` overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import UserError

__all__ = [
    "AugmentationConfig",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "HardwareConfig",
    "LoraConfigSection",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "TrainingConfig",
    "UPSTREAM_TARGET_MODULES",
    "apply_overrides",
    "load_config",
]


class ConfigError(UserError):
    """A configuration problem the user can fix by editing the YAML or the override."""


# The target list MedSAM3-v1 was trained with (upstream matched Linear names *containing* these).
UPSTREAM_TARGET_MODULES = (
    "qkv",
    "proj",
    "fc1",
    "fc2",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "c_fc",
    "c_proj",
    "linear1",
    "linear2",
)


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict:
    return {"min": lo, "max": hi, "min_open": lo_open}


@dataclass
class ModelConfig:
    name: str = "facebook/sam3"
    """Hub repo id or a local directory with a transformers SAM3 checkpoint and processor."""
    cache_dir: Optional[str] = None
    revision: Optional[str] = None
    lora_weights: Optional[str] = None
    """Adapter source: a path (.pt, .safetensors, PEFT dir), a hub reference, "none" for plain
    SAM3, or null to auto-detect ``output.output_dir/best_lora_weights*`` (upstream behaviour)."""
    resolution: Optional[int] = field(default=None, metadata=_range(14))
    """Input size in pixels (multiple of 14); null keeps the checkpoint's own (1008 for facebook/sam3)."""
    ignore_trained_base: bool = False
    """Apply an adapter whose run also trained the base model (training.train_base_model) to another base
    anyway. Off: such an adapter is refused with the name of the full model (best_model/) that belongs to it."""


@dataclass
class LoraConfigSection:
    rank: int = field(default=16, metadata=_range(1))
    alpha: float = field(default=32.0, metadata=_range(0, lo_open=True))
    dropout: float = field(default=0.1, metadata=_range(0.0, 1.0))
    target_modules: list[str] = field(default_factory=lambda: list(UPSTREAM_TARGET_MODULES))
    apply_to_vision_encoder: bool = True
    apply_to_text_encoder: bool = True
    apply_to_geometry_encoder: bool = True
    apply_to_detr_encoder: bool = True
    apply_to_detr_decoder: bool = True
    apply_to_mask_decoder: bool = True


@dataclass
class TrainingConfig:
    train_data_path: Optional[str] = None
    val_data_path: Optional[str] = None
    data_dir: Optional[str] = None
    batch_size: int = field(default=1, metadata=_range(1))
    num_workers: int = field(default=2, metadata=_range(0))
    learning_rate: float = field(default=5e-5, metadata=_range(0, lo_open=True))
    weight_decay: float = field(default=0.01, metadata=_range(0))
    adam_beta1: float = field(default=0.9, metadata=_range(0.0, 1.0))
    adam_beta2: float = field(default=0.999, metadata=_range(0.0, 1.0))
    adam_epsilon: float = field(default=1e-8, metadata=_range(0, lo_open=True))
    max_grad_norm: float = field(default=1.0, metadata=_range(0))
    num_epochs: int = field(default=100, metadata=_range(1))
    warmup_steps: int = field(default=0, metadata=_range(0))
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    logging_steps: int = field(default=10, metadata=_range(1))
    eval_steps: int = field(default=500, metadata=_range(1))
    save_steps: int = field(default=1000, metadata=_range(1))
    save_total_limit: int = field(default=3, metadata=_range(1))
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    seed: int = 42
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1))
    num_negatives: int = field(default=3, metadata=_range(0))
    gradient_checkpointing: bool = False
    train_annotation_file: Optional[str] = None
    """Plain COCO: the training annotation JSON; ``train_data_path`` is then the image root."""
    val_annotation_file: Optional[str] = None
    """Plain COCO: the validation annotation JSON; ``val_data_path`` is then the image root."""
    train_base_model: bool = False
    """Also train every base SAM3 weight (full fine-tuning; LoRA layers are still added). Saves
    full model directories (``best_model``/``last_model``) that ``model.name`` loads."""
    max_steps: Optional[int] = field(default=None, metadata=_range(1))
    """Train for exactly this many optimizer steps, overriding ``num_epochs`` (null: ``num_epochs`` decides)."""


@dataclass
class AugmentationConfig:
    """Train-time augmentation (``medsam3.data.AugmentConfig``); every default means off."""

    hflip_prob: float = field(default=0.0, metadata=_range(0.0, 1.0))
    vflip_prob: float = field(default=0.0, metadata=_range(0.0, 1.0))
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    brightness: float = field(default=0.0, metadata=_range(0.0, 0.99))
    contrast: float = field(default=0.0, metadata=_range(0.0, 0.99))


@dataclass
class LossConfig:
    """Weights of SAM3's loss terms (defaults: SAM3's / upstream MedSAM3's)."""

    loss_ce: float = field(default=20.0, metadata=_range(0.0))
    loss_presence: float = field(default=20.0, metadata=_range(0.0))
    loss_bbox: float = field(default=5.0, metadata=_range(0.0))
    loss_giou: float = field(default=2.0, metadata=_range(0.0))
    loss_mask: float = field(default=200.0, metadata=_range(0.0))
    loss_dice: float = field(default=10.0, metadata=_range(0.0))


@dataclass
class OutputConfig:
    output_dir: str = "outputs/sam3_lora_full"
    logging_dir: str = "logs"
    save_lora_only: bool = True
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None


@dataclass
class EvaluationConfig:
    metric: Literal["iou", "dice", "loss"] = "iou"
    save_predictions: bool = False
    compute_metrics_during_training: bool = True
    threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))
    """Score threshold of validation Dice/IoU (and so of best-checkpoint selection): the threshold the
    model will be used at. 0.5 is SAM3's default; a small model trained briefly may score below it."""


@dataclass
class HardwareConfig:
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    dataloader_pin_memory: bool = True
    use_compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Inference precision: "auto" is bf16 autocast on CUDA and fp32 on CPU."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    source: Optional[str] = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain nested dict (the YAML layout), e.g. to store beside a checkpoint."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _public_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


_NO = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or ``_NO``. Accepts "5e-5" for floats, as PyYAML leaves it a string."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO
        (item_tp,) = typing.get_args(tp)
        items = [_coerce(v, item_tp) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if tp is type(None):
        return None if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    raise TypeError(f"unsupported config type {tp!r}")


def _check_range(value: Any, meta: typing.Mapping, where: str) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if value is None or (lo is None and hi is None):
        return
    if lo is not None and (value <= lo if meta.get("min_open") else value < lo):
        bound = f"> {lo}" if meta.get("min_open") else f">= {lo}"
        raise ConfigError(f"{where}: {value!r} is out of range, must be {bound}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} is out of range, must be <= {hi}")


def _unknown_key(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key{hint}")


def _build_section(cls: type, raw: Any, origin: str, section: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: '{section}' must be a mapping of keys, got {type(raw).__name__}")
    fields = _public_fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        where = f"{origin}: {section}.{key}"
        if key not in fields:
            prefixed = {f"{section}.{k}" for k in fields}
            err = _unknown_key(f"{section}.{key}", prefixed, where)
            raise err
        out = _coerce(value, hints[key])
        if out is _NO:
            raise ConfigError(f"{where}: expected {_type_name(hints[key])}, got {value!r}")
        _check_range(out, fields[key].metadata, where)
        kwargs[key] = out
    return cls(**kwargs)


def _check_top_level(raw: Any, origin: str) -> dict:
    """An empty document means the defaults; anything but a mapping (a list, a scalar) is an error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: the top level must be a mapping with sections {list(_public_fields(Config))}, "
            f"got a {type(raw).__name__}"
        )
    return raw


def config_from_dict(raw: dict, origin: str = "<config>") -> Config:
    """Validate a nested dict (the YAML layout) into a :class:`Config`."""
    raw = _check_top_level(raw, origin)
    sections = _public_fields(Config)
    hints = typing.get_type_hints(Config)
    built = {}
    for name, value in raw.items():
        if name not in sections:
            raise _unknown_key(name, sections, f"{origin}: {name}")
        built[name] = _build_section(hints[name], value, origin, name)
    cfg = Config(**built, source=origin)
    _check_consistency(cfg, origin)
    return cfg


def _check_consistency(cfg: Config, origin: str) -> None:
    if not cfg.lora.target_modules:
        raise ConfigError(f"{origin}: lora.target_modules is empty; list at least one name, e.g. q_proj")
    if cfg.model.resolution is not None and cfg.model.resolution % 14:
        raise ConfigError(
            f"{origin}: model.resolution={cfg.model.resolution} must be a multiple of the patch size 14 "
            f"(e.g. 1008, 504, 336)"
        )
    scale = cfg.augmentation.scale_range
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ConfigError(f"{origin}: augmentation.scale_range must be [lo, hi] with 0 < lo <= hi, got {scale}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. training.learning_rate=1e-4")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: the key must be section.key, e.g. lora.rank=16")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw nested dict (values parsed as YAML)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in _check_top_level(raw, "--set").items()}
    for item in overrides:
        (section, key), value = _parse_override(item)
        node = raw.setdefault(section, {})
        if node is None:
            node = raw[section] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: section '{section}' is not a mapping in the config")
        node[key] = value
    return raw


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read, override and validate a YAML config; ``path=None`` gives the defaults."""
    if path is None:
        raw: Any = {}
        origin = "<defaults>"
    else:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"{origin}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    raw = _check_top_level(raw, origin)  # before the overrides, which must not paper over a bad file
    if overrides:
        origin += " (with --set overrides)"
        raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, origin)
