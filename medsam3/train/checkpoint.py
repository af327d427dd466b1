"""Checkpoints: written atomically, pruned past ``save_total_limit``, read back for ``--resume``.

Layout under ``output.output_dir``::

    checkpoint-<step>/            one per save_steps (the newest save_total_limit are kept)
        adapter_config.json       PEFT adapter (Predictor / --weights load it)
        adapter_model.safetensors
        trainable.safetensors     every trainable tensor (LoRA, + base weights with train_base_model)
        trainer_state.pt          optimizer, scheduler, grad scaler, RNG states, step/epoch/position
        trainer_state.json        the same counters, human-readable
    best_lora_weights/            PEFT adapter with the best evaluation.metric
    last_lora_weights/            PEFT adapter at the end of training
    best_model/, last_model/      full (merged) models, only with save_lora_only: false or train_base_model
    train_log.jsonl               one JSON object per log / eval line

Every directory is built under a temporary name in ``output_dir`` and renamed into place, so an
interrupted save never leaves a half-written checkpoint that ``--resume`` would pick up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputNotFoundError, UserError, disk_full_errors

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "atomic_dir",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainable",
    "load_trainer_state",
    "prune_checkpoints",
    "remove_stale_tmp",
    "resolve_resume",
    "save_trainable",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"
TRAINABLE = "trainable.safetensors"
TMP_PREFIX = ".tmp-"  # directories being written; a killed save leaves one, removed by remove_stale_tmp
_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    A full disk raises :class:`medsam3.errors.DiskFullError` naming ``target``; the partial directory
    is removed and the previous ``target`` (and every other checkpoint) stays as it was.
    """
    target = Path(target)
    with disk_full_errors(target, "the checkpoint" if checkpoint_step(target) is not None else "the folder"):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        with disk_full_errors(target, "the checkpoint" if checkpoint_step(target) is not None else "the folder"):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_tmp(output_dir: str | Path) -> list[Path]:
    """Delete half-written directories a killed run left (``kill -9`` during a save); returns them.

    Call it only where no other process of this run writes (rank 0, before training starts).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    stale = []
    for path in sorted(output_dir.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(".old-"):  # killed between the two renames of a replacement: put it back
            original = output_dir / path.name[len(".old-") :].rsplit("-", 1)[0]
            if not original.exists():
                os.replace(path, original)
                logger.warning("restored %s, moved aside by an interrupted save", original)
                continue
        elif not path.name.startswith(TMP_PREFIX):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted save", path)
        stale.append(path)
    return stale


def checkpoint_step(path: Path) -> int | None:
    match = _STEP_RE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with a trainer state), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        p
        for p in output_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / TRAINER_STATE).is_file()
    ]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, limit: int) -> list[Path]:
    """Delete the oldest checkpoints so that at most ``limit`` remain; returns the deleted ones."""
    found = list_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - limit)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed old checkpoint %s (save_total_limit=%d)", path.name, limit)
    return doomed


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """``latest`` -> newest checkpoint in ``output_dir``; otherwise a checkpoint directory path."""
    if resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise InputNotFoundError(
                f"--resume: no checkpoint-<step>/ with {TRAINER_STATE} in {output_dir}; start without --resume "
                f"or pass a checkpoint directory"
            )
        return found
    path = Path(resume).expanduser()
    if not (path / TRAINER_STATE).is_file():
        raise InputNotFoundError(f"--resume {resume}: not a checkpoint directory (no {TRAINER_STATE} in it)")
    return path


def save_trainable(model: torch.nn.Module, directory: Path) -> None:
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(directory / TRAINABLE))


def load_trainable(model: torch.nn.Module, directory: Path) -> None:
    """Copy the checkpoint's trainable tensors into ``model``; names must match exactly."""
    tensors = load_file(str(directory / TRAINABLE))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = params.keys() - tensors.keys(), tensors.keys() - params.keys()
    if missing or unexpected:
        raise UserError(
            f"{directory}: checkpoint does not match the model's trainable parameters ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {sorted(missing | unexpected)[:3]}); resume with the config it "
            f"was trained with (lora.*, training.train_base_model)"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise UserError(
                    f"{directory}: {name} has shape {tuple(tensors[name].shape)}, model {tuple(param.shape)}"
                )
            param.copy_(tensors[name].to(param.device, param.dtype))


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_STATE, map_location="cpu", weights_only=True)
