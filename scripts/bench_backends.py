#!/usr/bin/env python3
"""PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 under the same Predictor (``bench_inference.py --backend``).

Each backend runs in its own process (so its peak memory, ``ru_maxrss``, is its own), all loaded
at once and driven round by round in turn, so a machine shared with other jobs slows them alike:
per round, each backend embeds the image (vision pass) and answers N prompts (text encoder
included: the text cache is cleared every round). Figures are medians over rounds, as ratios to
PyTorch measured in the same run. Raw outputs of every query (scores, boxes) are compared with
PyTorch's: on random weights this says how far ORT / int8 move the numbers, not how accurate they are.

  python scripts/bench_inference.py --model full --resolution 504 --backend torch ort-fp32 ort-int8
  python scripts/bench_backends.py --model tiny --backend torch ort-fp32 ort-int8      # the same, directly
  python scripts/bench_backends.py --weights W.pt --set model.name=CKPT --set model.resolution=504 --onnx-dir DIR
  python scripts/bench_backends.py --demo-dice    # held-out Dice per concept, demo + adapters: torch / ORT fp32 / int8

The ONNX export of a random model is written once to ``--onnx-cache`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["liver", "liver tumor", "kidney", "spleen", "pancreas", "gallbladder", "stomach", "aorta"]
IMAGE_HW = (480, 640)
BACKENDS = ("torch", "ort-fp32", "ort-int8")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------------------ export (subprocess)
def export(model: str, resolution: int | None, out: Path, int8_scope: str = "mlp") -> None:
    from medsam3.inference.onnx_export import export_onnx
    from medsam3.testing import random_sam3

    sam3, processor = random_sam3(model, resolution)
    identity = {"random": model, "resolution": resolution, "seed": 0}
    export_onnx(sam3, processor, out, identity, origin=f"random {model} SAM3", int8=True, int8_scope=int8_scope)


# ------------------------------------------------------------------------------ worker (subprocess)
def _precision(backend: str) -> str:
    return backend.partition("=")[0].removeprefix("ort-")


def _check_backend(spec: str) -> str:
    """``torch``, ``ort-fp32``, ``ort-int8``, or ``ort-int8=DIR``: the int8 graphs of another folder (a variant)."""
    name, _, folder = spec.partition("=")
    if name not in BACKENDS or (folder and name == "torch"):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected torch, ort-fp32, ort-int8 or ort-int8=DIR")
    return spec


def _predictor(args, backend: str, model: str, resolution: int | None, onnx_dir: Path):
    from medsam3.inference.predictor import Predictor

    if args.weights is not None:  # a real model: as the CLI loads it, the folder checked against it
        from medsam3.config import load_config
        from medsam3.inference.onnx_backend import onnx_predictor

        cfg = load_config(args.config, args.set)
        if backend == "torch":  # the adapter merged, as in the export: both sides run the same arithmetic
            from medsam3.adapters.loading import load_model
            from medsam3.inference.onnx_export import merged_model

            model, processor, _ = load_model(cfg, args.weights)
            return Predictor(merged_model(model), processor, device="cpu", precision="fp32")
        return onnx_predictor(cfg, onnx_dir, args.weights, _precision(backend))
    if backend == "torch":
        from medsam3.testing import random_sam3

        sam3, processor = random_sam3(model, resolution)
        return Predictor(sam3, processor, device="cpu", precision="fp32")
    from transformers import Sam3Processor

    from medsam3.inference.onnx_backend import OnnxSam3

    ort = OnnxSam3(onnx_dir, _precision(backend))
    return Predictor(
        ort, Sam3Processor.from_pretrained(onnx_dir), device="cpu", precision="fp32", prompt_batch_size=ort.prompt_rows
    )


def worker(args) -> None:
    """Line protocol on stdin/stdout: ``round`` -> timings, ``raw`` -> scores and boxes, ``quit`` -> peak RSS."""
    import torch

    from medsam3.inference.postprocess import detection_scores

    t0 = time.perf_counter()
    predictor = _predictor(args, args.backend, args.model, args.resolution, args.onnx_dir)
    image = (np.random.RandomState(0).rand(*IMAGE_HW, 3) * 255).astype(np.uint8)
    prompts = PROMPTS[: args.prompts]
    predictor.set_image(image)  # warm-up, untimed
    predictor.predict(prompts[:2], threshold=args.threshold)
    reply = {"load_s": time.perf_counter() - t0}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "round":
            predictor.clear_cache()
            t0 = time.perf_counter()
            predictor.set_image(image)
            t1 = time.perf_counter()
            predictor.predict(prompts, threshold=args.threshold)
            t2 = time.perf_counter()
            reply = {"vision_s": t1 - t0, "prompts_s": t2 - t1, "end_to_end_s": t2 - t0}
        elif cmd == "raw":
            rows = [(0, p, (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))) for p in prompts]
            scores, boxes = [], []
            for start in range(0, len(rows), predictor.prompt_batch_size):
                chunk = rows[start : start + predictor.prompt_batch_size]
                out = predictor.forward_rows(
                    predictor._vision, [0] * len(chunk), [r[1] for r in chunk], [r[2] for r in chunk], [IMAGE_HW]
                )
                scores.append(detection_scores(out.pred_logits, out.presence_logits).float())
                boxes.append(out.pred_boxes.float())
            reply = {"scores": torch.cat(scores).tolist(), "boxes": torch.cat(boxes).tolist()}
        elif cmd == "quit":
            reply = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(reply), flush=True)
        if cmd == "quit":
            return


# ------------------------------------------------------------------------------ driver
class Worker:
    def __init__(self, backend: str, args, resolution, onnx_dir: Path):
        onnx_dir = Path(backend.partition("=")[2] or onnx_dir)
        cmd = [sys.executable, __file__, "--worker", backend, "--model", args.model, "--onnx-dir", str(onnx_dir)]
        cmd += ["--prompts", str(args.prompts), "--threshold", str(args.threshold)]
        if resolution:
            cmd += ["--resolution", str(resolution)]
        if args.weights is not None:
            cmd += ["--weights", args.weights, *(["--config", args.config] if args.config else [])]
            cmd += [a for s in args.set for a in ("--set", s)]
        self.backend = backend
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.backend} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()


def compare_backends(args, resolution: int | None) -> dict:
    cache = Path(args.onnx_cache)
    scope = "" if args.int8_scope == "mlp" else f"_{args.int8_scope}"
    onnx_dir = args.onnx_dir or cache / f"{args.model}_{resolution or 'default'}{scope}"
    if (
        args.weights is None
        and any(b.startswith("ort") for b in args.backend)
        and not (onnx_dir / "medsam3_onnx.json").exists()
    ):
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--export", str(onnx_dir), "--model", args.model]
        cmd += ["--int8-scope", args.int8_scope, *(["--resolution", str(resolution)] if resolution else [])]
        subprocess.run(cmd, check=True, env=_env())
        print(f"exported {args.model} at {resolution} px in {time.perf_counter() - t0:.0f} s -> {onnx_dir}", flush=True)
    workers = [Worker(b, args, resolution, onnx_dir) for b in args.backend]  # one at a time: memory peaks apart
    rounds: dict[str, list[dict]] = {w.backend: [] for w in workers}
    for r in range(args.rounds):
        order = workers[r % len(workers) :] + workers[: r % len(workers)]  # who goes first rotates
        for w in order:
            rounds[w.backend].append(w.ask("round"))
    raw = {w.backend: w.ask("raw") for w in workers}
    peak = {w.backend: w.ask("quit")["peak_rss_gib"] for w in workers}
    for w in workers:
        w.proc.wait()
    manifest = json.loads((onnx_dir / "medsam3_onnx.json").read_text()) if onnx_dir.exists() else {}
    row = {
        "model": args.model if args.weights is None else f"{args.weights} ({', '.join(args.set)})",
        "resolution": resolution or manifest.get("resolution"),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "prompts": args.prompts,
        "rounds": args.rounds,
        "backends": {},
    }
    base = rounds.get("torch")
    for b, rs in rounds.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("vision_s", "prompts_s", "end_to_end_s")}
        entry = {**{k: round(v, 3) for k, v in med.items()}, "peak_rss_gib": round(peak[b], 2)}
        entry["per_round"] = [{k: round(v, 3) for k, v in x.items()} for x in rs]
        if base is not None:
            for k in ("vision_s", "end_to_end_s"):
                entry[f"{k.removesuffix('_s')}_speedup_vs_torch"] = round(
                    statistics.median(x[k] for x in base) / med[k], 2
                )
        if "torch" in raw and b != "torch":
            s0, s1 = np.array(raw["torch"]["scores"]), np.array(raw[b]["scores"])
            b0, b1 = np.array(raw["torch"]["boxes"]), np.array(raw[b]["boxes"])
            entry["max_score_diff_vs_torch"] = float(np.abs(s0 - s1).max())
            entry["max_box_diff_vs_torch"] = float(np.abs(b0 - b1).max())  # normalised xyxy (0..1)
            entry["top10_same_queries"] = float(
                np.mean([len(set(np.argsort(-a)[:10]) & set(np.argsort(-c)[:10])) / 10 for a, c in zip(s0, s1)])
            )
        row["backends"][b] = entry
    return row


def print_row(row: dict) -> None:
    print(
        f"{row['model']} SAM3 at {row['resolution']} px, {row['threads']} threads, 1 image x {row['prompts']} prompts, "
        f"median of {row['rounds']} interleaved rounds"
    )
    for b, e in row["backends"].items():
        extra = ""
        if "vision_speedup_vs_torch" in e:
            extra = f"  vision {e['vision_speedup_vs_torch']:.2f}x, end to end {e['end_to_end_speedup_vs_torch']:.2f}x"
        if "max_score_diff_vs_torch" in e:
            extra += (
                f"  |score diff| max {e['max_score_diff_vs_torch']:.1e}, |box diff| max "
                f"{e['max_box_diff_vs_torch']:.1e}, top-10 queries shared {e['top10_same_queries']:.2f}"
            )
        print(
            f"  {b:9s} vision {e['vision_s']:7.2f} s  {row['prompts']} prompts {e['prompts_s']:6.2f} s  "
            f"end to end {e['end_to_end_s']:7.2f} s  peak RSS {e['peak_rss_gib']:.2f} GiB{extra}",
            flush=True,
        )


# ------------------------------------------------------------------------------ demo Dice
DEMO_WEIGHTS = {"demo": ("chaos", "mscmr", "brats"), "demo:hc18": ("hc18",), "demo:ph2": ("ph2",)}


def _export_is_current(onnx_dir: Path, weights: str) -> bool:
    """Whether ``onnx_dir`` holds an export of what ``weights`` loads today (the manifest's identity check)."""
    from medsam3.config import load_config
    from medsam3.inference.onnx_manifest import OnnxFolderError, check_identity, read_manifest, source_identity

    try:
        check_identity(onnx_dir, read_manifest(onnx_dir), source_identity(load_config(None), weights))
    except OnnxFolderError as exc:
        if onnx_dir.exists():
            print(f"re-exporting: {exc}", file=sys.stderr)
        return False
    return True


def demo_dice(args) -> dict:
    """Held-out Dice per concept of the shipped demo per backend: weights value -> backend -> dataset -> concept.

    The test subjects of ``scripts/build_demo_sets.py``'s split (the ones MODEL.md's tables use), through
    ``medsam3-evaluate`` (``demo_tables.py``'s call) at each weights value's shipped threshold: the base
    on CHAOS, MS-CMRSeg and BraTS, each adapter on its modality. Every weights value is exported once
    (``--int8`` at ``--int8-scope``) to ``--onnx-cache/demo_<adapter>_<scope>``.
    """
    sys.path.insert(0, str(REPO / "scripts"))
    import demo_tables

    manifests = {d: args.demo_sets / "import" / d / "manifest.json" for d in demo_tables.DATASETS}
    missing = [str(m) for m in manifests.values() if not m.is_file()]
    if missing:
        raise SystemExit(
            f"--demo-dice needs the demo's split ({missing[0]} is missing): run "
            f"python scripts/build_demo_sets.py --datasets {args.demo_datasets} --out {args.demo_sets}"
        )
    dice: dict = {}
    for weights, datasets in DEMO_WEIGHTS.items():
        onnx_dir = Path(args.onnx_cache) / f"{weights.replace(':', '_')}_{args.int8_scope}"
        if not _export_is_current(onnx_dir, weights):  # retrained weights under the same name: export again
            cmd = [sys.executable, "-m", "medsam3.cli.export", "--weights", weights, "--onnx", str(onnx_dir)]
            cmd += ["--int8", "--int8-scope", args.int8_scope, "--overwrite", "-q"]
            subprocess.run(cmd, check=True, env=_env(), cwd=REPO)
        runs = {
            "torch": [],
            "ort-fp32": ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir), "--precision", "fp32"],
            "ort-int8": ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir), "--precision", "int8"],
        }
        for backend, extra in runs.items():
            for dataset in datasets:
                rows = demo_tables.evaluate(
                    [
                        "--weights",
                        weights,
                        *extra,
                        "--dataset",
                        str(args.demo_datasets / demo_tables.DATASETS[dataset]),
                        "--cases",
                        f"{manifests[dataset]}:test",
                    ],
                    args.demo_out / f"{weights.replace(':', '_')}_{args.int8_scope}" / backend / dataset,
                )
                per_concept = demo_tables.per_concept(rows)
                dice.setdefault(weights, {}).setdefault(backend, {})[dataset] = {
                    c: v["dice"] for c, v in per_concept.items()
                }
    return dice


def print_demo_dice(dice: dict) -> None:
    print("demo held-out Dice per concept (test subjects, shipped thresholds): torch / ORT fp32 / int8 (int8 - torch)")
    for weights, by_backend in dice.items():
        for dataset, concepts in by_backend["torch"].items():
            for concept, ref in concepts.items():
                fp32 = by_backend["ort-fp32"][dataset][concept]
                int8 = by_backend["ort-int8"][dataset][concept]
                values = f"{ref:.4f} / {fp32:.4f} / {int8:.4f} ({int8 - ref:+.4f})"
                print(f"  {weights:10s} {dataset:6s} {concept:18s} {values}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "full"], help="random SAM3 (default tiny)")
    ap.add_argument("--resolution", type=int, nargs="+", default=[None], help="input size(s) (default: the model's)")
    ap.add_argument(
        "--backend",
        nargs="+",
        type=_check_backend,
        default=list(BACKENDS),
        help="torch, ort-fp32, ort-int8, ort-int8=DIR (the int8 graph of another folder, e.g. another --int8-scope)",
    )
    ap.add_argument("--prompts", type=int, default=8, help="prompts per image (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per backend (default 3)")
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--onnx-cache", default=str(Path(tempfile.gettempdir()) / "medsam3_bench_onnx"))
    ap.add_argument("--demo-dice", action="store_true", help="held-out Dice per concept of the demo, per backend")
    ap.add_argument("--demo-datasets", type=Path, default=REPO.parent / "shared" / "datasets", help="with --demo-dice")
    ap.add_argument("--demo-sets", type=Path, default=REPO / "runs" / "demo_sets", help="build_demo_sets.py's --out")
    ap.add_argument("--demo-out", type=Path, default=REPO / "runs" / "demo_backends", help="evaluation outputs")
    ap.add_argument(
        "--int8-scope", default="mlp", choices=["mlp", "linear"], help="what the exports quantise (medsam3-export's)"
    )
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    ap.add_argument(
        "--onnx-dir", type=Path, help="an export of the model --config/--weights/--set load (instead of a random one)"
    )
    ap.add_argument("--config", help="with --weights: the config of the model to compare")
    ap.add_argument("--weights", help="a real model: adapter as for infer_sam.py (needs --onnx-dir)")
    ap.add_argument("--set", action="append", default=[], help="config overrides, as for infer_sam.py")
    args = ap.parse_args()
    if args.export:
        export(args.model, args.resolution[0], Path(args.export), args.int8_scope)
        return 0
    if args.worker:
        args.backend, args.resolution = args.worker, args.resolution[0]
        worker(args)
        return 0
    results = []
    if args.demo_dice:
        dice = demo_dice(args)
        results.append({"demo_dice": dice})
        print_demo_dice(dice)
    else:
        for resolution in args.resolution:
            row = compare_backends(args, resolution)
            print_row(row)
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
