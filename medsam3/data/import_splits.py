"""Which case goes to which split when importing a dataset: by subject, never by slice.

* A *subject* is the case name, or the part of it that ``--group`` (a regular expression) matches:
  the first capture group when it has one, else the whole match. ``HC18_010_2`` with
  ``--group 'HC18_\\d+'`` belongs to subject ``HC18_010``; all its images land in one split.
* Explicit lists (``{"train": [...], "valid": [...], "test": [...]}``, e.g. an earlier import's
  ``manifest.json``) decide where they apply; cases they do not name are not imported.
* Otherwise the subjects are shuffled with the seed and cut into fractions (at least one subject per
  requested split when there are three or more). Labelled test cases (``imagesTs`` + ``labelsTs``)
  are the test split, and fractions then only carve out the validation split.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["SPLITS", "DatasetImportError", "assign_splits", "read_split_lists", "subject_of"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


class DatasetImportError(UserError):
    """An import cannot go ahead as asked (options, split lists, output folder); nothing was written.

    Defined here, not as :class:`medsam3.data.coco_records.DatasetError`, so that importing needs no torch.
    """


def subject_of(case: str, group: str | None) -> str:
    """The subject a case belongs to under the ``--group`` pattern (the case itself without one)."""
    if not group:
        return case
    match = re.search(group, case)
    if match is None:
        return case
    return match.group(1) if match.groups() and match.group(1) else match.group(0)


def read_split_lists(path: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "valid": [...], "test": [...]}`` from a JSON file (a manifest's ``splits`` too)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetImportError(
            f"split file {p} cannot be read ({exc}). Fix: give a JSON file of case lists"
        ) from None
    if isinstance(raw, dict) and isinstance(raw.get("splits"), dict):
        raw = raw["splits"]
    aliases = {"val": "valid", "validation": "valid"}
    out: dict[str, list[str]] = {}
    for key, cases in raw.items() if isinstance(raw, dict) else []:
        split = aliases.get(key, key)
        if split not in SPLITS or not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
            raise DatasetImportError(f"split file {p}: entry {key!r}. Fix: use train/valid/test -> lists of case names")
        out[split] = list(cases)
    if not out:
        raise DatasetImportError(
            f"split file {p} names no split. Fix: {{'train': [...], 'valid': [...], 'test': [...]}}"
        )
    return out


def _cut(subjects: list[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Shuffle ``subjects`` and cut off one part per fraction; the rest is the first part (train)."""
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n = len(order)
    sizes = [int(round(f * n)) for f in fractions]
    if n >= 3:
        sizes = [max(1, s) if f > 0 else 0 for s, f in zip(sizes, fractions)]
    while sum(sizes) >= n and any(sizes):  # train keeps at least one subject
        sizes[int(np.argmax(sizes))] -= 1
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start : start + size])
        start += size
    return [order[start:], *parts]


def assign_splits(
    cases: Iterable[tuple[str, bool]],
    *,
    group: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    explicit: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """``{case: split}`` for ``(case name, is_labelled_test_case)`` pairs; see the module docstring."""
    cases = list(cases)
    names = {c for c, _ in cases}
    subjects = {c: subject_of(c, group) for c, _ in cases}
    if explicit:
        out: dict[str, str] = {}
        for split, listed in explicit.items():
            unknown = sorted(set(listed) - names)
            if unknown:
                raise DatasetImportError(
                    f"split list '{split}' names case(s) not in the dataset: {', '.join(unknown[:5])}. "
                    "Fix: use the case names of imagesTr/imagesTs"
                )
            for c in listed:
                if c in out and out[c] != split:
                    raise DatasetImportError(f"case {c} is listed in both '{out[c]}' and '{split}'. Fix: list it once")
                out[c] = split
        left = sorted(names - set(out))
        if left:
            logger.warning("%d case(s) are in no split list and are not imported: %s", len(left), ", ".join(left[:5]))
    else:
        for f in (valid_fraction, test_fraction):
            if not 0.0 <= f < 1.0:
                raise DatasetImportError(f"split fraction {f} is outside [0, 1). Fix: e.g. --valid-fraction 0.1")
        test_subjects = {subjects[c] for c, is_test in cases if is_test}
        pool = sorted({subjects[c] for c, _ in cases} - test_subjects)
        if test_subjects:
            train, valid = _cut(pool, [valid_fraction], seed)
            test: list[str] = []
        else:
            train, valid, test = _cut(pool, [valid_fraction, test_fraction], seed)
        by_subject = {s: "train" for s in train} | {s: "valid" for s in valid} | {s: "test" for s in test}
        by_subject |= {s: "test" for s in test_subjects}
        out = {c: by_subject[subjects[c]] for c in names}
    splits_of: dict[str, set[str]] = defaultdict(set)
    for c, split in out.items():
        splits_of[subjects[c]].add(split)
    leaking = sorted(s for s, used in splits_of.items() if len(used) > 1)
    if leaking:
        raise DatasetImportError(
            f"subject(s) {', '.join(leaking[:5])} would be in several splits ({sorted(splits_of[leaking[0]])}). "
            "Fix: list all cases of a subject in one split (or change --group)"
        )
    return out
