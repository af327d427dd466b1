"""torchrun evaluation (2 processes, gloo, CPU): the same per-case rows and summary as one process."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import python_cmd, run_process, torchrun_cmd
from tests.evaluation.conftest import make_eval_set


def _read(out):
    with open(out / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("prediction")  # relative path: same, but checked separately below
    summary = json.loads((out / "summary.json").read_text())
    for key in ("argv", "seconds"):
        summary.pop(key)
    return rows, summary, (out / "summary.csv").read_text()


@pytest.mark.slow  # two torchrun ranks: ~30 s on 2 idle cores
def test_two_ranks_give_the_one_process_rows_and_summary(tmp_path, tiny_config):
    common = [
        "--config",
        tiny_config,
        "--weights",
        "none",
        *make_eval_set(tmp_path, corrupt=True),  # 3 images + an unreadable one, 2 volumes
        "--protocol",
        "text",
        "text+box",
        "--thresholds",
        "0.0",
        "0.3",
        "--coco-map",
    ]
    one = run_process(python_cmd("scripts/evaluate.py", *common, "--output-dir", tmp_path / "one", "-q"), tmp_path)
    assert one.returncode == 1, one.stderr[-3000:]  # the unreadable image is a listed failure
    two = run_process(torchrun_cmd("scripts/evaluate.py", *common, "--output-dir", tmp_path / "two"), tmp_path)
    assert two.returncode != 0
    assert "rank 0 of 2" in two.stderr and "rank 1 of 2" in two.stderr, two.stderr[-3000:]

    rows1, summary1, csv1 = _read(tmp_path / "one")
    rows2, summary2, csv2 = _read(tmp_path / "two")
    assert len(rows1) == (5 + 4) * 2 * 2  # (2D cases + 3D cases) x protocols x thresholds
    assert rows2 == rows1  # same rows, same order, same numbers (full precision in the CSV)
    assert summary2 == summary1 and summary1["n_cases"] == 6 and len(summary1["failures"]) == 1
    assert csv2 == csv1
    # every prediction file written once, by one of the ranks, at the path the row names
    preds1 = sorted(
        p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "predictions").rglob("*") if p.is_file()
    )
    preds2 = sorted(
        p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "predictions").rglob("*") if p.is_file()
    )
    assert preds1 == preds2 and len(preds1) == len(rows1)
