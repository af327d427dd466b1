"""summary.csv: what docs/evaluation.md promises (mean, std, median per concept), recomputed from per_case.csv."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medsam3.evaluation import METRICS
from tests.evaluation.conftest import make_eval_set, run_evaluate

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_csv_has_mean_std_median_per_concept(tmp_path, tiny_config):
    out = tmp_path / "eval"
    code = run_evaluate(
        tiny_config,
        *make_eval_set(tmp_path),
        "--thresholds",
        "0.0",
        "0.5",
        "--output-dir",
        out,
    )
    assert code == 0
    per_case, summary = _csv(out / "per_case.csv"), _csv(out / "summary.csv")
    groups: dict[tuple, list[dict]] = {}
    for r in per_case:
        groups.setdefault((r["modality"], r["concept"], r["protocol"], float(r["threshold"])), []).append(r)
    assert len(summary) == len(groups) >= 4  # 2D liver + kidney, 3D liver + spleen, per threshold
    for s in summary:
        rows = groups[(s["modality"], s["concept"], s["protocol"], float(s["threshold"]))]
        assert int(s["n_cases"]) == len(rows)
        for m in METRICS:
            values = np.array([float(r[m]) for r in rows])
            finite = values[np.isfinite(values)]
            if not finite.size:
                assert s[f"{m}_mean"] == s[f"{m}_median"] == ""
                continue
            assert float(s[f"{m}_mean"]) == pytest.approx(finite.mean(), abs=1e-12)
            assert float(s[f"{m}_std"]) == pytest.approx(finite.std(), abs=1e-12)
            assert float(s[f"{m}_median"]) == pytest.approx(float(np.median(finite)), abs=1e-12)
            assert int(s[f"{m}_n"]) == finite.size
        assert int(s["hd95_n_inf"]) == sum(math.isinf(float(r["hd95"])) for r in rows)
    # summary.json carries the same median
    js = json.loads((out / "summary.json").read_text())["results"]
    assert [r["dice"]["median"] for r in js] == pytest.approx([float(s["dice_median"]) for s in summary])
