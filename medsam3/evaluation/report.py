"""Reports from per-case rows: summaries per concept, best thresholds, tables, CSV/JSON files and a plot."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..outputs import write_json
from .cases import CSV_COLUMNS, METRICS
from .metrics import summarize

if TYPE_CHECKING:  # annotations only: importing the protocol (torch) is for running cases
    from .protocol import EvaluationReport

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------------------------- #
def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """mean/std/median/n of every metric per (modality, concept, protocol, threshold), in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["modality"], r["concept"], r["protocol"], float(r["threshold"])), []).append(r)
    out = []
    for (modality, concept, protocol, t), rs in groups.items():
        entry: dict[str, Any] = {
            "modality": modality,
            "concept": concept,
            "protocol": protocol,
            "threshold": t,
            "n_cases": len(rs),
            "n_present": sum(bool(r["present"]) for r in rs),
        }
        for m in METRICS:
            entry[m] = summarize(float(r[m]) for r in rs)
        out.append(entry)
    return out


def best_thresholds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (concept, protocol), over all modalities: the threshold with the highest mean Dice (ties: lowest)."""
    by: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["concept"], r["protocol"])][float(r["threshold"])].append(float(r["dice"]))
    out = []
    for (concept, protocol), per_t in by.items():
        means = {t: summarize(v)["mean"] for t, v in sorted(per_t.items())}
        finite = {t: m for t, m in means.items() if not math.isnan(m)}
        best = max(finite, key=lambda t: (finite[t], -t)) if finite else None
        out.append(
            {
                "concept": concept,
                "protocol": protocol,
                "threshold": best,
                "dice_mean": finite.get(best, math.nan) if best is not None else math.nan,
                "dice_by_threshold": {f"{t:g}": m for t, m in means.items()},
            }
        )
    return out


def _fmt(stats: Mapping[str, Any]) -> str:
    if stats["n"] == 0:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def format_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("dice", "nsd")) -> str:
    """The paper's layout: one line per (modality, concept, threshold), metric columns per protocol."""
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    keyed = {(s["modality"], s["concept"], s["threshold"], s["protocol"]): s for s in summary}
    lines_keys = list(dict.fromkeys((s["modality"], s["concept"], s["threshold"]) for s in summary))
    names = {"dice": "Dice", "iou": "IoU", "nsd": "NSD", "hd95": "HD95"}
    header = ["modality", "concept", "thr", "n"] + [f"{p} {names.get(m, m)}" for p in protocols for m in metrics]
    body = []
    for modality, concept, t in lines_keys:
        first = next(keyed[(modality, concept, t, p)] for p in protocols if (modality, concept, t, p) in keyed)
        cells = [str(modality), str(concept), f"{t:g}", str(first["n_cases"])]
        for p in protocols:
            s = keyed.get((modality, concept, t, p))
            cells += [_fmt(s[m]) if s else "-" for m in metrics]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: the CSV must reproduce the numbers, not round them
    if isinstance(v, bool):
        return int(v)
    return v


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null/"inf" so summary.json is strict JSON any tool can read."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def plot_dice(summary: Sequence[Mapping[str, Any]], best: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Bar chart of mean Dice per concept (bars per protocol, at each concept's best threshold).

    Raises ``ImportError`` when matplotlib is missing (it is optional).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_t = {(b["concept"], b["protocol"]): b["threshold"] for b in best}
    keys = list(dict.fromkeys((s["modality"], s["concept"]) for s in summary))
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(keys) * len(protocols) + 2), 4))
    width = 0.8 / len(protocols)
    for j, p in enumerate(protocols):
        means, stds = [], []
        for modality, concept in keys:
            s = next(
                (
                    s
                    for s in summary
                    if (s["modality"], s["concept"], s["protocol"]) == (modality, concept, p)
                    and s["threshold"] == best_t.get((concept, p))
                ),
                None,
            )
            means.append(s["dice"]["mean"] if s else 0.0)
            stds.append(s["dice"]["std"] if s else 0.0)
        ax.bar(
            np.arange(len(keys)) + j * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), label=p, capsize=3
        )
    ax.set_xticks(np.arange(len(keys)) + width * (len(protocols) - 1) / 2)
    ax.set_xticklabels([f"{c}\n({m})" for m, c in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (mean ± std)")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


SUMMARY_STATS = ("mean", "std", "median", "n")


def summary_csv_columns() -> list[str]:
    """summary.csv: one row per (modality, concept, protocol, threshold); per metric mean, std, median, n."""
    cols = ["modality", "concept", "protocol", "threshold", "n_cases", "n_present"]
    cols += [f"{m}_{stat}" for m in METRICS for stat in SUMMARY_STATS]
    return cols + ["hd95_n_inf"]


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The summary as a spreadsheet-friendly table (full-precision numbers, NaN left empty), atomically."""
    path = Path(path)
    columns = summary_csv_columns()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for s in summary:
            row: dict[str, Any] = {k: s[k] for k in columns[:6]}
            for m in METRICS:
                for stat in SUMMARY_STATS:
                    v = s[m][stat]
                    row[f"{m}_{stat}"] = "" if isinstance(v, float) and math.isnan(v) else _csv_value(v)
            row["hd95_n_inf"] = s["hd95"]["n_inf"]
            writer.writerow(row)
    os.replace(tmp, path)
    return path


def write_report(
    report: EvaluationReport, output_dir: str | Path, *, meta: Mapping[str, Any] | None = None, figure: bool = False
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.csv``, ``summary.json`` and (optionally) ``dice_per_concept.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    csv_path = out / "per_case.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in report.rows:
            writer.writerow({k: _csv_value(r.get(k, "")) for k in CSV_COLUMNS})
    os.replace(tmp, csv_path)
    paths["per_case"] = csv_path

    summary = summarize_rows(report.rows)
    best = best_thresholds(report.rows)
    opts = asdict(report.options)
    opts["window"] = None if report.options.window is None else str(report.options.window)
    data = {
        **(dict(meta) if meta else {}),
        "options": opts,
        "n_cases": report.n_cases,
        "n_evaluated": report.n_cases - len(report.failures),
        "n_rows": len(report.rows),
        "results": summary,
        "best_thresholds": best,
        "coco_map": report.coco_map,
        "failures": report.failures,
        "notes": {
            "hd95": "cases where exactly one of prediction/ground truth is empty have HD95 = inf; "
            "they are left out of the HD95 mean and counted in n_inf",
            "spacing_2d": "2D images without pixel spacing are scored at 1 mm per pixel",
        },
    }
    paths["summary"] = write_json(_json_safe(data), out / "summary.json")
    paths["summary_csv"] = write_summary_csv(summary, out / "summary.csv")
    if figure:
        try:
            paths["figure"] = plot_dice(summary, best, out / "dice_per_concept.png")
        except ImportError:
            logger.warning(
                "--figure needs matplotlib, which is not installed (pip install matplotlib); no figure written"
            )
    return paths
