"""Evaluate on an nnU-Net v2 / MSD dataset folder directly: per case and concept, on the volumes.

``medsam3-evaluate --dataset DatasetNNN_Name [--cases FILE | --cases OUT_DIR/manifest.json:test]``

* **Cases.** The labelled cases of the folder (``imagesTr`` + ``labelsTr``, ``imagesTs`` +
  ``labelsTs``), or those named by ``--cases``: a text file with one case name per line, or an
  imported folder's ``manifest.json:SPLIT`` (the split ``medsam3-import`` wrote; the concepts then
  take the manifest's names, renames included). The channel is the manifest's, else ``--channel``.
* **Ground truth.** A concept's mask is the union of its label values (regions as nnU-Net trains
  them); a label map that does not match its image, or holds values ``dataset.json`` does not name,
  fails that case (listed in the report, the others still count).
* **Prediction.** What ``infer_sam.py`` does with the case's file: a volume is segmented slice by
  slice along the same axis, in slice batches, as the volume-set path does it
  (:meth:`.protocol.Evaluator.volume_masks`: the prompt's own mask, before overlaps between prompts
  are resolved); a 2D image with one call of the predictor. One model pass per case: every swept
  threshold is derived from it. Only the ``text`` protocol.
* **Metrics.** :func:`medsam3.evaluation.metrics.compute_all` per case and concept: 3D Dice, IoU,
  NSD and HD95 with the volume's voxel spacing (2D files: 1 mm per pixel), rows and report files
  as for any other set (:mod:`.report`).

This module picks the cases without torch (the CLI checks them before the model loads);
:mod:`.folder_protocol` runs them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..io.nnunet import DatasetCase, DatasetFolder, read_dataset
from .cases import EvaluationError

__all__ = ["FolderCases", "is_dataset_folder", "load_folder_cases"]

logger = logging.getLogger(__name__)


def is_dataset_folder(path: str | Path | None) -> bool:
    """True for a folder holding an nnU-Net / MSD ``dataset.json``."""
    return path is not None and (Path(path) / "dataset.json").is_file()


@dataclass
class FolderCases:
    """The cases to evaluate, with the prompt of each concept and the channel to read."""

    dataset: DatasetFolder
    cases: list[DatasetCase]
    prompts: list[str]  # one per dataset.concepts entry
    channel: int


def _read_case_names(spec: str) -> tuple[list[str], dict | None]:
    """(case names, manifest or None) from ``FILE`` or ``manifest.json:SPLIT``."""
    path, sep, split = spec.rpartition(":")
    if sep and path.endswith(".json") and Path(path).is_file():
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        splits = manifest.get("splits", {}) if isinstance(manifest, dict) else {}
        if split not in splits:
            raise EvaluationError(f"--cases {spec}: the manifest has no split {split!r} (it has {sorted(splits)})")
        return list(splits[split]), manifest
    p = Path(spec)
    if not p.is_file():
        raise EvaluationError(f"--cases {spec}: no such file. Fix: a text file of case names, or manifest.json:test")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")], None


def load_folder_cases(root: str | Path, cases: str | None = None, channel: int | str | None = None) -> FolderCases:
    """Parse the dataset folder and pick the cases (see the module docstring); bad input raises."""
    dataset = read_dataset(root)
    prompts = [c.name for c in dataset.concepts]
    labelled = {c.name: c for c in dataset.cases if c.label is not None}
    if cases:
        names, manifest = _read_case_names(cases)
        if manifest is not None:
            renamed = {c["source_name"]: c["name"] for c in manifest.get("concepts", [])}
            prompts = [renamed.get(p, p) for p in prompts]
            if channel is None:
                channel = manifest.get("source", {}).get("channel", {}).get("index")
        unknown = [n for n in names if n not in labelled]
        if unknown:
            raise EvaluationError(f"--cases names {unknown[0]!r}, which is no labelled case of {dataset.root}")
        chosen = [labelled[n] for n in names]
    else:
        chosen = list(labelled.values())
    if not chosen:
        raise EvaluationError(f"{dataset.root}: no labelled case to evaluate")
    return FolderCases(dataset, chosen, prompts, dataset.channel_index(channel))
