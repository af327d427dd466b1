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

from ..inference.postprocess3d import RecordedConcepts
from ..outputs import write_json
from .cases import CSV_COLUMNS, METRICS
from .metrics import summarize

if TYPE_CHECKING:  # annotations only: importing the protocol (torch) is for running cases
    from .protocol import EvaluationReport

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------------------------- #
def _present(row: Mapping[str, Any]) -> bool:
    return str(row["present"]) not in ("0", "False", "false", "")


def _false_positive_rate(rows: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of absent cases with a non-empty prediction (NaN without absent cases)."""
    absent = [r for r in rows if not _present(r)]
    return sum(int(r["pred_size_px"]) > 0 for r in absent) / len(absent) if absent else math.nan


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (modality, concept, protocol, threshold), in first-seen order: mean/std/median/n of every
    metric over the cases where the concept is present, and the false-positive rate of the absent ones.

    Why absent cases stay out of the means: their Dice is 1 or 0 (empty vs empty, or any false pixel),
    which says "detected or not", not how well a structure was delineated; it would move the mean with
    the number of absent cases asked. They are reported as ``false_positive_rate`` instead.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["modality"], r["concept"], r["protocol"], float(r["threshold"])), []).append(r)
    out = []
    for (modality, concept, protocol, t), rs in groups.items():
        present = [r for r in rs if _present(r)]
        entry: dict[str, Any] = {
            "modality": modality,
            "concept": concept,
            "protocol": protocol,
            "threshold": t,
            "n_cases": len(rs),
            "n_present": len(present),
            "false_positive_rate": _false_positive_rate(rs),
        }
        for m in METRICS:
            entry[m] = summarize(float(r[m]) for r in present)
        out.append(entry)
    return out


def concept_means(rows: Sequence[Mapping[str, Any]], per_concept_thresholds: bool = False) -> list[dict[str, Any]]:
    """The one headline number per (protocol, threshold): mean Dice (and IoU) over concepts.

    The definition every Dice in medsam3 uses (``medsam3-evaluate``, trainer validation and the
    benchmark scripts call this): per (image or volume, concept) where the concept is present, Dice
    of the union of the detections above the threshold against the union of its ground truth;
    averaged per concept over its cases (all modalities together), then over concepts, each concept
    weighing the same. Absent cases count only in ``false_positive_rate`` (any predicted pixel).
    ``per_concept_thresholds``: each concept was scored at its own threshold, so one number per
    protocol over them all (``threshold`` None), not one per threshold over the concepts it serves.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["protocol"], None if per_concept_thresholds else float(r["threshold"])), []).append(r)
    out = []
    for (protocol, t), rs in groups.items():
        per_concept: dict[str, dict[str, Any]] = {}
        for concept in dict.fromkeys(r["concept"] for r in rs):
            present = [r for r in rs if r["concept"] == concept and _present(r)]
            if present:
                per_concept[concept] = {
                    "dice": float(np.mean([float(r["dice"]) for r in present])),
                    "iou": float(np.mean([float(r["iou"]) for r in present])),
                    "images": len(present),
                }
        means = {
            m: float(np.mean([v[m] for v in per_concept.values()])) if per_concept else math.nan
            for m in ("dice", "iou")
        }
        out.append(
            {
                "protocol": protocol,
                "threshold": t,
                **means,
                "per_concept": per_concept,
                "false_positive_rate": _false_positive_rate(rs),
                "n_absent": sum(not _present(r) for r in rs),
            }
        )
    return out


def best_thresholds(rows: Sequence[Mapping[str, Any]], count_absent: bool = False) -> list[dict[str, Any]]:
    """Per (concept, protocol), over all modalities: the threshold with the highest mean Dice (ties: lowest).

    ``count_absent``: absent cases count too, as 1 when nothing is predicted, else 0, so a threshold
    that finds the concept where it is not there pays for it (how training picks per-concept thresholds).
    """
    by: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        counted = _present(r) or count_absent
        by[(r["concept"], r["protocol"])][float(r["threshold"])] += [float(r["dice"])] if counted else []
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
    cols = ["modality", "concept", "protocol", "threshold", "n_cases", "n_present", "false_positive_rate"]
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
            row: dict[str, Any] = {k: s[k] for k in columns[:7]}
            if math.isnan(row["false_positive_rate"]):
                row["false_positive_rate"] = ""
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
    if isinstance(report.options.largest_component, RecordedConcepts):  # the weights' list, as they record it
        opts["largest_component"] = {"recorded": sorted(report.options.largest_component)}
    data = {
        **(dict(meta) if meta else {}),
        "options": opts,
        "n_cases": report.n_cases,
        "n_evaluated": report.n_cases - len(report.failures),
        "n_rows": len(report.rows),
        "results": summary,
        "concept_means": concept_means(report.rows, report.options.per_concept_thresholds),
        "best_thresholds": best,
        "coco_map": report.coco_map,
        "failures": report.failures,
        "notes": {
            "hd95": "cases where exactly one of prediction/ground truth is empty have HD95 = inf; "
            "they are left out of the HD95 mean and counted in n_inf",
            "spacing_2d": "2D images without pixel spacing are scored at 1 mm per pixel",
            "absent": "metrics are over the cases where the concept is present; absent cases (--include-absent) "
            "count in false_positive_rate (a non-empty prediction)",
            "concept_means": "per concept the mean over its present cases, then the mean over concepts",
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
