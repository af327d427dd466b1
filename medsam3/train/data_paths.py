"""Where a run's training and validation data live, from the config; no torch, so the CLI checks the
data layout before torch, transformers and the model load."""

from __future__ import annotations

from ..config import Config
from ..data.layout import SplitPaths, resolve_split
from ..errors import UserError

__all__ = ["NO_TRAINING_DATA", "split_paths", "train_split"]

NO_TRAINING_DATA = "no training data: set training.data_dir, training.train_data_path or training.train_annotation_file"


def split_paths(cfg: Config, split: str) -> SplitPaths | None:
    """The split's annotation file and image root, or None when the config names no data for it.

    Raises ``FileNotFoundError`` naming the places looked at when the config names data that is not there.
    """
    t = cfg.training
    path, ann = (
        (t.train_data_path, t.train_annotation_file) if split == "train" else (t.val_data_path, t.val_annotation_file)
    )
    if t.data_dir:
        return resolve_split(t.data_dir, split)
    if ann:
        return resolve_split(None, split, annotation_file=ann, image_root=path)
    if path:
        return resolve_split(path, split)
    return None


def train_split(cfg: Config) -> SplitPaths:
    """The training split, which every run needs; ``ValueError`` / ``FileNotFoundError`` say what is wrong."""
    paths = split_paths(cfg, "train")
    if paths is None:
        raise UserError(NO_TRAINING_DATA)
    return paths
