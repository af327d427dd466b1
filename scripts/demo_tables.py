#!/usr/bin/env python
"""The demo's tables (MODEL.md), every figure from ``medsam3-evaluate`` (the one evaluator).

    python scripts/demo_tables.py thresholds   # on the valid split: the operating threshold per model
    python scripts/demo_tables.py test         # on the held-out test subjects, at those thresholds

``thresholds`` sweeps each model's valid set (2D slices of the valid subjects, every concept asked
on every image) and keeps, per model, a threshold per concept: the one with the highest valid Dice on
that concept among those where it fires on <= 5% of the valid images of other datasets (its false
detections), ties to the higher; for the base's 3D concepts (CHAOS, MS-CMRSeg, BraTS) the Dice is
per-subject 3D Dice on the valid volumes, swept with and without ``--largest-component``, and the
clean-up is kept for a concept where it raises that Dice by more than ``MIN_CLEANUP_GAIN``. Prompts
outside the table get the model's one threshold (the highest mean Dice over its concepts among those
with <= 5% false detections on all absent prompts); ``--out/thresholds.json``.
``test`` reads them and writes ``--out/test.json`` + ``--out/test.md`` (``render`` rewrites
``test.md`` from ``test.json``):

* per-subject 3D Dice (``medsam3-evaluate --dataset DIR --cases IMPORT/manifest.json:test``) of the
  base on every dataset and concept (the adapters' concepts too: the "base alone" column), with the
  clean-up chosen on valid (and without it, for the record), and of every adapter run (LoRA 10 /
  50 / all images, full fine-tune) on its modality;
* false detections: every dataset's test images (``build_demo_sets.py``'s ``crosstest``) asked for
  every concept with ``--include-absent``; counted per weights value over the concepts it was trained
  on that the image's dataset does not label ("liver" on a heart MR, "fetal head" on CT): an image
  with any predicted pixel is a false detection; totals with and without the concepts an image shows
  unlabelled (``VISIBLE_UNLABELLED``: "brain" on a brain MR is not a false detection);
* trainable parameters, adapter file size and minutes of every run (its ``train_log.jsonl``).

Nothing is tuned on test: ``test`` only reads ``thresholds.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # import name -> nnU-Net folder
    "chaos": "Dataset101_CHAOS_T2SPIR",
    "mscmr": "Dataset102_MSCMR_bSSFP",
    "brats": "Dataset103_BraTS2013",
    "hc18": "Dataset104_HC18",
    "ph2": "Dataset105_PH2",
}
ADAPTERS = {"hc18": "fetal head", "ph2": "skin lesion"}
# Concepts a dataset shows without labelling them: not absent, so not a false detection there ("brain"
# on a brain MR, the stomach and aorta on an abdominal MR). Reported apart from the false detections.
VISIBLE_UNLABELLED = {"brats": {"brain"}, "chaos": {"stomach", "aorta"}}
MAX_FALSE_RATE = 0.05  # the threshold with the best valid Dice among those with <= 5% false detections
SWEEP = ["0.1", "0.15", "0.2", "0.25", "0.3", "0.4", "0.5", "0.6", "0.7"]
VOLUME_DATASETS = ("chaos", "mscmr", "brats")  # the base's 3D datasets: where a 3D clean-up can matter
MIN_CLEANUP_GAIN = 0.005  # valid Dice a concept must gain from --largest-component to get it (noise below)


MODELS = ["base"] + [f"{a}_{run}" for a in ADAPTERS for run in ("lora_all", "lora_10", "lora_50", "full_all")]


def model_args(runs: Path, name: str) -> list[str]:
    """medsam3-evaluate arguments that load a model (a stage-2 run's checkpoint is read only when asked for)."""
    base = runs / "base" / "best_model"
    if name == "base":
        return ["--weights", str(base)]
    adapter, kind, _ = name.split("_")
    concept = ADAPTERS[adapter]
    if kind == "full":
        return ["--weights", str(checkpoint(runs / name, concept, "model"))]
    lora = checkpoint(runs / name, concept, "lora_weights")
    config = str(REPO / "configs" / "demo" / "adapter_lora.yaml")  # the adapters' rank and alpha
    return ["--config", config, "--set", f"model.name={base}", "--weights", str(lora)]


def checkpoint(run: Path, concept: str, kind: str) -> Path:
    """``best_*`` or ``last_*`` of a stage-2 run: the one with the higher valid Dice on the new concept.

    The trainer's ``best`` is chosen on the mean over every valid concept, replayed ones included; an
    adapter is for its new concept, so the choice is made on that concept's valid Dice (never on test).
    """
    evals = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    evals = [d for d in evals if d.get("type") == "eval"]
    best_step = max((d["step"] for d in evals if d.get("best")), default=None)
    dice = {d["step"]: d["per_concept"].get(concept, {}).get("dice", 0.0) for d in evals}
    last_step = max(dice)
    if best_step is None or dice[last_step] >= dice[best_step]:
        return run / f"last_{kind}"
    return run / f"best_{kind}"


def evaluate(args: list[str], out_dir: Path) -> list[dict]:
    """Run medsam3-evaluate; its per-case rows."""
    cmd = [sys.executable, "-m", "medsam3.cli.evaluate", *args, "--output-dir", str(out_dir), "-q"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(out_dir / "per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def present(row: dict) -> bool:
    return row["present"] not in ("0", "False", "false", "")


def mean_dice(rows: list[dict], concept: str | None = None) -> tuple[float, int]:
    vals = [float(r["dice"]) for r in rows if present(r) and (concept is None or r["concept"] == concept)]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals)


def per_concept(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for concept in dict.fromkeys(r["concept"] for r in rows):
        dice, n = mean_dice(rows, concept)
        out[concept] = {"dice": dice, "cases": n}
    return out


def thresholds(args: argparse.Namespace) -> dict:
    path = args.out / "thresholds.json"
    chosen = json.loads(path.read_text()) if args.models and path.is_file() else {}
    for name in MODELS:
        if args.models and name not in args.models:
            continue
        margs = model_args(args.runs, name)
        data = args.sets / ("base" if name == "base" else name.split("_")[0] + "_all")
        rows = evaluate(
            [*margs, "--data-dir", str(data), "--split", "valid", "--include-absent", "--thresholds", *SWEEP],
            args.out / "valid" / name,
        )
        by_t = defaultdict(list)
        for r in rows:
            by_t[float(r["threshold"])].append(r)
        scores, false_rates = {}, {}
        for t, rs in sorted(by_t.items()):  # mean over concepts, each weighing the same
            pc = [v["dice"] for v in per_concept(rs).values() if v["cases"]]
            scores[t] = sum(pc) / len(pc)
            absent = [r for r in rs if not present(r)]
            false_rates[t] = sum(float(r["pred_size_px"]) > 0 for r in absent) / max(len(absent), 1)
        best = pick(scores, false_rates)
        dice_2d, false_2d = concept_sweep(rows)
        table = {c: pick(dice_2d[c], false_2d[c]) for c in dice_2d}
        chosen[name] = {
            "threshold": best,
            "valid_dice": scores,
            "valid_false_detection_rate": false_rates,
            "concept_thresholds": table,
            "valid_concept_dice": dice_2d,
            "valid_concept_false_detection_rate": false_2d,
        }
        print(
            f"{name}: threshold {best} (valid Dice {scores[best]:.3f}, false detections {false_rates[best]:.3f})",
            file=sys.stderr,
        )
        if name == "base":
            three = choose_3d(args, margs, false_2d)
            table.update(three.pop("concept_thresholds"))
            chosen[name].update(three)
        for c, t in chosen[name]["concept_thresholds"].items():
            print(f"{name}: {c} at {t}", file=sys.stderr)
    path.write_text(json.dumps(chosen, indent=1))
    return chosen


def pick(dice: dict[float, float], false_rate: dict[float, float]) -> float:
    """The threshold with the best Dice among those with <= MAX_FALSE_RATE false detections; ties: the higher."""
    allowed = [t for t in dice if false_rate.get(t, 0.0) <= MAX_FALSE_RATE] or [min(false_rate, key=false_rate.get)]
    return max(allowed, key=lambda t: (round(dice[t], 4), t))


def concept_sweep(rows: list[dict]) -> tuple[dict, dict]:
    """Per concept and threshold: valid Dice, and the rate of images of other datasets where it fires.

    "Other datasets": those that label none of it, less the ones that show it unlabelled
    (``VISIBLE_UNLABELLED``), as in the test's false-detection table.
    """

    def dataset(r: dict) -> str:
        return r["case_id"].split("_", 1)[0]

    labels = defaultdict(set)
    for r in rows:
        if present(r):
            labels[dataset(r)].add(r["concept"])
    dice, fired = defaultdict(dict), defaultdict(lambda: defaultdict(list))
    for (concept, t), rs in group(rows, lambda r: (r["concept"], float(r["threshold"]))).items():
        d, n = mean_dice(rs)
        if n:
            dice[concept][t] = d
        for r in rs:
            ds = dataset(r)
            if concept not in labels[ds] and concept not in VISIBLE_UNLABELLED.get(ds, ()):
                fired[concept][t].append(float(r["pred_size_px"]) > 0)
    false_rate = {c: {t: sum(fired[c][t]) / len(fired[c][t]) if fired[c][t] else 0.0 for t in dice[c]} for c in dice}
    return dict(dice), false_rate


def group(rows: list[dict], key) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def volume_dice(
    args: argparse.Namespace, margs: list[str], dataset: str, split: str, extra: list[str], out: Path
) -> dict:
    """Per-concept per-subject 3D Dice of one dataset's ``split`` subjects."""
    return per_concept(volume_rows(args, margs, dataset, split, extra, out))


def volume_rows(
    args: argparse.Namespace, margs: list[str], dataset: str, split: str, extra: list[str], out: Path
) -> list[dict]:
    return evaluate(
        [
            *margs,
            "--dataset",
            str(args.datasets / DATASETS[dataset]),
            "--cases",
            f"{args.sets / 'import' / dataset / 'manifest.json'}:{split}",
            *extra,
        ],
        out,
    )


def cleanup_args(concepts: list[str], dataset_concepts) -> list[str]:
    """``--largest-component`` for the chosen concepts this dataset labels (none: no flag)."""
    mine = [c for c in concepts if c in dataset_concepts]
    return ["--largest-component", *mine] if mine else []


def threshold_args(entry: dict) -> list[str]:
    """medsam3-evaluate arguments scoring every concept at the threshold chosen for it on valid."""
    out = ["--thresholds", str(entry["threshold"])]
    for concept, t in entry.get("concept_thresholds", {}).items():
        out += ["--concept-threshold", f"{concept}={t}"]
    return out


def choose_3d(args: argparse.Namespace, margs: list[str], false_2d: dict) -> dict:
    """The base's 3D concepts: threshold and clean-up from per-subject 3D Dice on the valid volumes."""
    raw, kept = {}, {}
    for dataset in VOLUME_DATASETS:
        for flags, into, tag in ((["--no-largest-component"], raw, ""), (["--largest-component"], kept, "_lcc")):
            out = args.out / "valid3d" / f"base_{dataset}{tag}"
            rows = volume_rows(args, margs, dataset, "valid", ["--thresholds", *SWEEP, *flags], out)
            for (concept, t), rs in group(rows, lambda r: (r["concept"], float(r["threshold"]))).items():
                d, n = mean_dice(rs)
                if n:
                    into.setdefault(concept, {})[t] = d
    table, cleanup = {}, []
    for c in [c for c in raw if c in false_2d]:  # the base's concepts (BraTS also labels tumour sub-regions)
        fr = false_2d[c]
        t_raw, t_kept = pick(raw[c], fr), pick(kept[c], fr)
        gain = kept[c][t_kept] - raw[c][t_raw]
        if gain > MIN_CLEANUP_GAIN:
            table[c] = t_kept
            cleanup.append(c)
        else:
            table[c] = t_raw
        print(
            f"base, valid 3D: {c} {raw[c][t_raw]:.3f} at {t_raw}, largest component {kept[c][t_kept]:.3f} at "
            f"{t_kept}: {'kept' if c in cleanup else 'not kept'}",
            file=sys.stderr,
        )
    return {
        "concept_thresholds": table,  # the 2D choice of the other concepts is replaced for these
        "largest_component": cleanup,
        "valid_3d_dice": raw,
        "valid_3d_dice_largest_component": kept,
    }


def run_facts(run: Path) -> dict:
    """Trainable parameters (counted in the saved files), adapter size and minutes (steps + validation) of a run."""
    from safetensors import safe_open

    def count(path: Path) -> int:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    facts: dict = {}
    seconds, last_step = 0.0, 0
    for line in (run / "train_log.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get("type") == "train":
            seconds += d["seconds_per_step"] * (d["step"] - last_step)
            last_step = d["step"]
        elif d.get("type") == "eval":
            seconds += d.get("seconds", 0.0)
    facts["minutes"] = round(seconds / 60, 1)
    lora = run / "last_lora_weights" / "adapter_model.safetensors"
    full = run / "last_model" / "model.safetensors"
    if full.is_file():  # the base was trained: every weight
        facts["trainable"] = count(full)
    elif lora.is_file():
        facts["trainable"] = count(lora)
        facts["adapter_mb"] = round(lora.stat().st_size / 1e6, 2)
    return facts


def known_concepts(runs: Path, name: str) -> set[str]:
    """The concepts a model's training recorded (base: medsam3_model.json; adapter: + medsam3_adapter.json)."""
    known = set(json.loads((runs / "base" / "best_model" / "medsam3_model.json").read_text())["concepts"])
    if name != "base":
        meta = checkpoint(runs / name, ADAPTERS[name.split("_")[0]], "lora_weights") / "medsam3_adapter.json"
        known |= set(json.loads(meta.read_text())["concepts"])
    return known


def false_detection_totals(cells: dict) -> dict:
    """Totals over a weights value's cells: every cell, and without the visible-unlabelled ones."""
    shown = {cell for cell in cells if cell.split(" | ")[1] in VISIBLE_UNLABELLED.get(cell.split(" | ")[0], ())}
    out = {}
    for key, keep in (("all", cells), ("absent", [c for c in cells if c not in shown])):
        hit, asked = sum(cells[c]["detected"] for c in keep), sum(cells[c]["images"] for c in keep)
        out[key] = {"detected": hit, "images": asked, "rate": hit / max(asked, 1)}
    return out


def test(args: argparse.Namespace) -> dict:
    chosen = json.loads((args.out / "thresholds.json").read_text())
    path = args.out / "test.json"
    result: dict = json.loads(path.read_text()) if args.models and path.is_file() else {}
    result.setdefault("dice", {})
    result.setdefault("false_detections", {})
    result["thresholds"] = {k: v["threshold"] for k, v in chosen.items()}
    result["concept_thresholds"] = {k: v.get("concept_thresholds", {}) for k, v in chosen.items()}

    def wanted(name: str) -> bool:
        return not args.models or name in args.models

    def subject_dice(name: str, dataset: str, extra: list[str] = (), tag: str = "") -> dict:
        t = [*threshold_args(chosen[name]), *extra]
        return volume_dice(
            args, model_args(args.runs, name), dataset, "test", t, args.out / "test" / f"{name}_{dataset}{tag}"
        )

    if wanted("base"):
        cleanup = chosen["base"].get("largest_component", [])
        result["largest_component"] = cleanup
        for dataset in DATASETS:
            raw = subject_dice("base", dataset, ["--no-largest-component"])  # raw, whatever the weights record
            extra = cleanup_args(cleanup, raw) if dataset in VOLUME_DATASETS else []
            result["dice"].setdefault("base", {})[dataset] = (
                subject_dice("base", dataset, extra, "_lcc") if extra else raw
            )
            result.setdefault("dice_without_cleanup", {}).setdefault("base", {})[dataset] = raw
    for adapter in ADAPTERS:
        for name in (f"{adapter}_lora_all", f"{adapter}_full_all", f"{adapter}_lora_10", f"{adapter}_lora_50"):
            if wanted(name):
                result["dice"][name] = {adapter: subject_dice(name, adapter)}

    # False detections: per weights value, concepts of other datasets on every dataset's test images.
    labelled = json.loads((args.sets / "crosstest" / "labelled.json").read_text())  # dataset -> its concepts
    for name in ("base", "hc18_lora_all", "ph2_lora_all"):
        if not wanted(name):
            continue
        rows = evaluate(
            [
                *model_args(args.runs, name),
                "--data-dir",
                str(args.sets / "crosstest"),
                "--split",
                "test",
                "--include-absent",
                *threshold_args(chosen[name]),
            ],
            args.out / "test" / f"{name}_crosstest",
        )
        known = known_concepts(args.runs, name)  # a weights value answers for the concepts it was trained on
        counts: dict = defaultdict(lambda: [0, 0])
        for r in rows:
            dataset = r["case_id"].split("_", 1)[0]
            if present(r) or r["concept"] in labelled[dataset] or r["concept"] not in known:
                continue
            c = counts[(dataset, r["concept"])]
            c[0] += int(float(r["pred_size_px"]) > 0)
            c[1] += 1
        table = {f"{d} | {c}": {"detected": v[0], "images": v[1]} for (d, c), v in sorted(counts.items())}
        result["false_detections"][name] = {"cells": table, **false_detection_totals(table)}

    result["base_concepts"] = sorted(known_concepts(args.runs, "base"))
    result["runs"] = {p.name: run_facts(p) for p in sorted(args.runs.iterdir()) if (p / "train_log.jsonl").is_file()}
    path.write_text(json.dumps(result, indent=1))
    complete = set(result["dice"]) == set(MODELS) and len(result["false_detections"]) == 3
    if complete:  # the tables, once every model is in (--models runs them a few at a time)
        render(args)
    return result


def render(args: argparse.Namespace) -> None:
    """``test.md`` from ``test.json`` (no evaluation)."""
    result = json.loads((args.out / "test.json").read_text())
    for v in result["false_detections"].values():  # test.json files written before the split into all / absent
        v.update(false_detection_totals(v["cells"]))
    (args.out / "test.md").write_text(markdown(result))
    print(markdown(result))


def fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def markdown(result: dict) -> str:
    t = result["thresholds"]
    own = result.get("concept_thresholds", {})

    def threshold(name: str, concept: str) -> float:
        return own.get(name, {}).get(concept, t[name])

    cleanup = result.get("largest_component", [])
    raw = result.get("dice_without_cleanup", {}).get("base", {})
    lines = [
        "### Base, per-subject 3D Dice on the test subjects",
        "",
        f"Each concept at its threshold chosen on valid (other prompts: {t['base']}). Largest 3D component kept "
        f"(chosen on valid) for: {', '.join(cleanup) or 'none'}.",
        "",
        "| dataset | concept | threshold | Dice | without the clean-up | subjects |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, concepts in result["dice"]["base"].items():
        for concept, v in concepts.items():
            note = "" if concept in result.get("base_concepts", [concept]) else " (not a base concept)"
            before = raw.get(dataset, {}).get(concept, {}).get("dice", float("nan"))
            lines.append(
                f"| {dataset} | {concept}{note} | {threshold('base', concept):g} | {fmt(v['dice'])} | {fmt(before)} "
                f"| {v['cases']} |"
            )
    lines += [
        "",
        "### Adapters, test subjects",
        "",
        "| modality | base alone | LoRA 10 | LoRA 50 | LoRA all | full fine-tune (all) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for adapter, concept in ADAPTERS.items():
        cells = [fmt(result["dice"]["base"][adapter][concept]["dice"])]
        for name in ("lora_10", "lora_50", "lora_all", "full_all"):
            cells.append(fmt(result["dice"][f"{adapter}_{name}"][adapter][concept]["dice"]))
        lines.append(f"| {adapter} ({concept}) | " + " | ".join(cells) + " |")
    lines.append("")
    for adapter, concept in ADAPTERS.items():
        runs = ("lora_10", "lora_50", "lora_all", "full_all")
        chosen = ", ".join(f"{r} {threshold(f'{adapter}_{r}', concept):g}" for r in runs)
        lines.append(f"Threshold of {concept} (chosen on valid): base {threshold('base', concept):g}, {chosen}.")
    lines += [
        "",
        "### False detections (another dataset's concept; images with any predicted pixel)",
        "",
        "| weights | images of | detected / asked | rate |",
        "| --- | --- | --- | --- |",
    ]
    for name, v in result["false_detections"].items():
        per_dataset: dict = defaultdict(lambda: [0, 0])
        for cell, c in v["cells"].items():
            per_dataset[cell.split(" | ")[0]][0] += c["detected"]
            per_dataset[cell.split(" | ")[0]][1] += c["images"]
        for dataset, (hit, asked) in per_dataset.items():
            lines.append(f"| {name} | {dataset} | {hit} / {asked} | {hit / max(asked, 1):.3f} |")
        for key, label in (("all", "**all**"), ("absent", "**all but visible-unlabelled**")):
            t = v[key]
            lines.append(f"| {name} | {label} | {t['detected']} / {t['images']} | {t['rate']:.3f} |")
    shown = ", ".join(f"{c} on {d}" for d, cs in VISIBLE_UNLABELLED.items() for c in sorted(cs))
    lines += ["", f"(visible-unlabelled: {shown}: the image shows it, the dataset does not label it)"]
    lines += ["", "### Runs", "", "| run | trainable parameters | adapter MB | minutes |", "| --- | --- | --- | --- |"]
    for name, v in result["runs"].items():
        lines.append(f"| {name} | {v.get('trainable', '-')} | {v.get('adapter_mb', '-')} | {v.get('minutes', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["thresholds", "test", "render"], help="render: test.md from test.json")
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--sets", type=Path, default=Path("runs/demo_sets"))
    p.add_argument("--runs", type=Path, default=Path("runs/demo"))
    p.add_argument("--out", type=Path, default=Path("runs/demo/tables"))
    p.add_argument(
        "--models", nargs="*", help="only these models (e.g. base hc18_lora_all), merged with the ones already done"
    )
    args = p.parse_args(argv)
    args.datasets, args.sets, args.runs, args.out = (
        x.resolve() for x in (args.datasets, args.sets, args.runs, args.out)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    {"thresholds": thresholds, "test": test, "render": render}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
