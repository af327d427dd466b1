#!/usr/bin/env python
"""Held-out Dice per concept for the demo models: base (stage 1) / LoRA / full fine-tune (stage 2).

Every model is scored by ``medsam3.evaluation`` (the code of ``medsam3-evaluate --include-absent
--protocol text``, and of trainer validation) on every image of ``<data>/all/<split>``, asked every
concept of the split:

* concept present in the image -> Dice of the union of the detections above the threshold against
  the union of its instances; averaged per concept, then over concepts
  (:func:`medsam3.evaluation.concept_means`);
* concept absent -> a false detection if the predicted mask is not empty.

    python scripts/bench_learning.py --data runs/demo_data \\
        --model base=runs/demo/stage1/best_model \\
        --model lora=runs/demo/stage1/best_model+runs/demo/stage2_lora/best_lora_weights \\
        --model full=runs/demo/stage2_full/best_model \\
        --minutes base=runs/demo/stage1 --minutes lora=runs/demo/stage2_lora --minutes full=runs/demo/stage2_full \\
        --json runs/demo/table.json --markdown runs/demo/table.md

``NAME=BASE_DIR[+ADAPTER_DIR]``. Training minutes are the sum of ``seconds_per_step`` x
``logging_steps`` from each run's ``train_log.jsonl`` (optimizer steps only, without validation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_minutes(run_dir: Path) -> float | None:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    every = cfg.get("training", {}).get("logging_steps", 1)
    secs = [json.loads(line).get("seconds_per_step") for line in log.read_text().splitlines() if line.strip()]
    secs = [s for s in secs if s is not None]
    return sum(secs) * every / 60.0 if secs else None


def evaluate(spec: str, data: Path, split: str, thresholds: list[float], threads: int):
    """Per (image, concept, threshold) rows of ``medsam3.evaluation``, the concepts, and each image's source.

    One model run per image at the lowest threshold; the others are derived from its detections
    (the evaluator's threshold sweep, equal to separate runs).
    """
    import torch

    from medsam3.config import load_config
    from medsam3.evaluation import EvalOptions, Evaluator, load_coco_set
    from medsam3.inference.predictor import Predictor

    torch.set_num_threads(threads)
    base, _, adapter = spec.partition("+")
    overrides = [f"model.name={base}", "hardware.device=cpu"]
    if adapter:
        meta = json.loads((Path(adapter) / "adapter_config.json").read_text())
        overrides += [f"lora.rank={meta['r']}", f"lora.alpha={meta['lora_alpha']}"]
    predictor = Predictor.from_config(load_config(None, overrides), weights=adapter or "none", device="cpu")
    cases = load_coco_set(data / "all" / split / "_annotations.coco.json", include_absent=True)
    options = EvalOptions(protocols=("text",), thresholds=tuple(thresholds), include_absent=True)
    report = Evaluator(predictor, options, None).run(coco=cases)
    if report.failures:
        raise SystemExit(f"{len(report.failures)} image(s) could not be evaluated: {report.failures}")
    sources = {rec.file_name: rec.entry.get("source") for rec in cases.records.images}
    return report.rows, list(cases.prompts.values()), sources


def summarise(rows, concepts, sources, t: float):
    from medsam3.evaluation import concept_means

    mine = [r for r in rows if float(r["threshold"]) == t]
    (means,) = concept_means(mine)
    out = {}
    for c in concepts:
        present = [r for r in mine if r["concept"] == c and r["present"]]
        absent = [r for r in mine if r["concept"] == c and not r["present"]]
        by_source = defaultdict(list)
        for r in present:
            by_source[sources[r["case_id"]]].append(float(r["dice"]))
        out[c] = {
            "dice": means["per_concept"][c]["dice"] if c in means["per_concept"] else None,
            "n": len(present),
            "by_source": {s: [float(np.mean(v)), len(v)] for s, v in sorted(by_source.items())},
            "false_detections": sum(r["pred_size_px"] > 0 for r in absent),
            "absent": len(absent),
        }
    out["_all"] = {
        "false_detections": sum(v["false_detections"] for v in out.values()),
        "absent": sum(v["absent"] for v in out.values()),
        "mean_dice": means["dice"],
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "demo_data")
    p.add_argument("--split", default="test")
    p.add_argument("--model", action="append", required=True, metavar="NAME=BASE[+ADAPTER]")
    p.add_argument("--minutes", action="append", default=[], metavar="NAME=RUN_DIR[,RUN_DIR]")
    p.add_argument("--threshold", type=float, default=0.5, help="detection threshold of the table (default 0.5)")
    p.add_argument(
        "--extra-thresholds", type=float, nargs="*", default=[], help="also summarised in --json (and 0.5 always)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)

    results, concepts = {}, []
    thresholds = sorted(set([args.threshold, 0.5, *args.extra_thresholds]))
    for item in args.model:
        name, _, spec = item.partition("=")
        t0 = time.perf_counter()
        rows, concepts, sources = evaluate(spec, args.data, args.split, thresholds, args.threads)
        results[name] = {
            "spec": spec,
            "summary": summarise(rows, concepts, sources, args.threshold),
            "by_threshold": {str(t): summarise(rows, concepts, sources, t) for t in thresholds},
            "rows": rows,
        }
        print(f"evaluated {name} ({spec}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    minutes = {}
    for item in args.minutes:
        name, _, dirs = item.partition("=")
        vals = [train_minutes(Path(d)) for d in dirs.split(",")]
        minutes[name] = sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None

    names = list(results)
    head = (
        "| concept | n | "
        + " | ".join(f"{n} Dice" for n in names)
        + " | "
        + " | ".join(f"{n} false det." for n in names)
    )
    lines = [head + " |", "|" + "---|" * (2 + 2 * len(names))]
    for c in concepts:
        s0 = results[names[0]]["summary"][c]
        cells = [c, str(s0["n"])]
        for n in names:
            v = results[n]["summary"][c]["dice"]
            cells.append("-" if v is None else f"{v:.3f}")
        for n in names:
            s = results[n]["summary"][c]
            cells.append(f"{s['false_detections']}/{s['absent']}")
        lines.append("| " + " | ".join(cells) + " |")
    tot = ["all absent", ""] + [""] * len(names)
    for n in names:
        a = results[n]["summary"]["_all"]
        tot.append(f"{a['false_detections']}/{a['absent']} ({100 * a['false_detections'] / max(a['absent'], 1):.1f}%)")
    lines.append("| " + " | ".join(tot) + " |")
    lines.append("")
    lines.append("Per source (mean Dice, slices):")
    lines.append("")
    for c in concepts:
        parts = []
        for n in names:
            bs = results[n]["summary"][c]["by_source"]
            parts.append(f"{n}: " + ", ".join(f"{s} {v[0]:.3f} ({v[1]})" for s, v in bs.items()))
        if any(results[n]["summary"][c]["by_source"] for n in names):
            lines.append(f"- {c}: " + "; ".join(parts))
    if minutes:
        lines.append("")
        lines.append(
            "Training minutes (optimizer steps): "
            + ", ".join(f"{n} {m:.1f}" if m is not None else f"{n} ?" for n, m in minutes.items())
        )
    lines.append("")
    lines.append(f"Threshold {args.threshold} (score = sigmoid(logit) x sigmoid(presence)), split {args.split}.")
    if args.threshold != 0.5:
        lines.append("")
        lines.append("At threshold 0.5, mean Dice / false detections:")
        lines.append("")
        for n in names:
            s5 = results[n]["by_threshold"]["0.5"]
            cells = ", ".join(f"{c} {s5[c]['dice']:.3f}" for c in concepts if s5[c]["dice"] is not None)
            a = s5["_all"]
            lines.append(f"- {n}: {cells}; false detections {a['false_detections']}/{a['absent']}")
    lines.append("")
    lines.append(
        "Mean Dice over concepts by threshold (pick the operating threshold on the valid split, never on test):"
    )
    lines.append("")
    for n in names:
        per_t = {float(t): summ["_all"]["mean_dice"] for t, summ in results[n]["by_threshold"].items()}
        best = max(sorted(per_t, reverse=True), key=lambda t: per_t[t])  # ties -> the higher threshold
        results[n]["mean_dice_by_threshold"] = per_t
        results[n]["best_threshold"] = best
        lines.append(f"- {n}: " + ", ".join(f"{t:g}: {v:.3f}" for t, v in sorted(per_t.items())) + f" -> best {best:g}")
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "minutes": minutes, "concepts": concepts}, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
