"""The JSON beside exported ONNX graphs: what was exported, from what, so a stale folder is caught.

An ONNX folder is a merged model frozen at one input size. Loading it for a run that asks for
another adapter, another base model or another resolution would answer silently with the wrong
weights, so :func:`check_identity` compares what the run would load (:func:`source_identity`,
computed from the files, without loading the model) with what the folder records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from ..adapters.sources import Sources
from ..config import Config
from ..errors import UserError

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "OnnxFolderError",
    "check_identity",
    "read_manifest",
    "source_identity",
    "sources_identity",
    "tensors_digest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "medsam3_onnx.json"
FORMAT_VERSION = 1


class OnnxFolderError(UserError):
    """An ONNX folder that is missing, incomplete, or exported from other weights or another input size."""


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_digest(state: dict) -> str:
    """sha256 over names, shapes, dtypes and bytes of a state dict (independent of its file format)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _base_identity(name: str) -> dict:
    """A local checkpoint: its config and the sizes of its weight files (hashing GBs at every load is too slow)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return {"name": name}  # a hub id: the name (and revision, if any, in it) is what identifies it
    config = path / "config.json"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    return {
        "name": str(path.resolve()),
        "config_sha256": _file_digest(config) if config.exists() else None,
        "weight_files": {w.name: w.stat().st_size for w in weights},
    }


def source_identity(cfg: Config, weights: str | None) -> dict:
    """What ``load_model(cfg, weights)`` would load, as comparable data (see :func:`sources_identity`)."""
    from ..adapters.sources import resolve_sources

    return sources_identity(resolve_sources(cfg, weights))


def sources_identity(sources: Sources) -> dict:
    """What a run's resolved sources load, as comparable data: base, adapter tensors, LoRA config, size.

    Reads the adapter (megabytes), not the base model (gigabytes).
    """
    from ..adapters.loading import read_adapter

    cfg = sources.cfg
    adapter = None
    if str(sources.adapter).lower() != "none":
        weights_ = read_adapter(sources.adapter, cache_dir=cfg.model.cache_dir)
        adapter = {"sha256": tensors_digest(weights_.state), "rank": weights_.rank, "alpha": weights_.alpha}
    return {
        "base": _base_identity(sources.cfg.model.name),
        "adapter": adapter,
        "lora": dataclasses.asdict(sources.cfg.lora) if adapter is not None else None,
        "resolution": sources.cfg.model.resolution,
    }


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    path.write_text(json.dumps({"format": FORMAT_VERSION, **manifest}, indent=2, default=str) + "\n")
    return path


def read_manifest(onnx_dir: str | Path) -> dict:
    """The folder's manifest, or a one-line error saying how to make one."""
    onnx_dir = Path(onnx_dir).expanduser()
    path = onnx_dir / MANIFEST_NAME
    if not onnx_dir.is_dir():
        raise OnnxFolderError(f"{onnx_dir}: ONNX folder not found; write one with `medsam3-export --onnx {onnx_dir}`")
    if not path.exists():
        raise OnnxFolderError(
            f"{onnx_dir}: no {MANIFEST_NAME}, so not a medsam3 ONNX export; write one with "
            f"`medsam3-export --onnx {onnx_dir}`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OnnxFolderError(f"{path}: unreadable ({exc}); re-export the folder with medsam3-export --onnx") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise OnnxFolderError(
            f"{path}: export format {manifest.get('format')!r}, this medsam3 reads {FORMAT_VERSION}; "
            f"re-export the folder with medsam3-export --onnx"
        )
    return manifest


def _differences(recorded, expected, prefix: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(recorded) | set(expected)):
            out += _differences(recorded.get(key), expected.get(key), f"{prefix}{key}.")
        return out
    return [] if recorded == expected else [f"{prefix.rstrip('.')}: folder {recorded!r}, this run {expected!r}"]


def check_identity(onnx_dir: str | Path, manifest: dict, expected: dict) -> None:
    """Refuse a folder exported from other weights, LoRA settings or input size than this run would load."""
    recorded = json.loads(json.dumps(manifest.get("identity"), default=str))
    expected = json.loads(json.dumps(expected, default=str))
    diffs = _differences(recorded, expected)
    if diffs:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diffs[:3])
        raise OnnxFolderError(
            f"{onnx_dir}: exported from other weights or settings than this run loads ({shown}); "
            f"re-export it with the same --config/--weights/--set: medsam3-export --onnx {onnx_dir}"
        )
