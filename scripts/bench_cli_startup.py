#!/usr/bin/env python3
"""How long a user waits for ``--help`` and for the error on an obvious mistake.

Each command runs in a fresh interpreter (as a user runs it), ``--runs`` times; the median and the
worst wall-clock time are printed, beside the time of importing torch + transformers alone (what
every one of these commands paid before the CLI imports were made lazy). The target is under 1.5 s.

    python scripts/bench_cli_startup.py            # 5 runs each
    python scripts/bench_cli_startup.py --runs 10

Each error path must end with its one-line error and exit code 2 (checked on every run).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.5


def commands(tmp: Path, busy_port: int) -> list[tuple[str, list[str], int]]:
    """(what, argv, expected exit code)."""
    import nibabel as nib
    import numpy as np

    py = sys.executable
    missing = str(tmp / "no_such_scan.png")
    image = tmp / "scan.pgm"
    image.write_bytes(b"P5 8 8 255\n" + bytes(64))  # a real 8x8 image, so the config is what fails
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    four_d = tmp / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), four_d)
    not_dicom = tmp / "pngs"
    not_dicom.mkdir()
    (not_dicom / "a.png").write_bytes(image.read_bytes())
    infer = [py, "infer_sam.py", "--prompt", "liver"]
    demo_slice = str(REPO / "medsam3" / "demo" / "examples" / "ct_dicom_slice.dcm")
    return [
        ("infer_sam.py --help", [py, "infer_sam.py", "--help"], 0),
        ("infer_sam.py, missing image", [py, "infer_sam.py", "--image", missing, "--prompt", "liver"], 2),
        (
            "infer_sam.py, bad config key",
            [py, "infer_sam.py", "--image", str(image), "--prompt", "liver", "--set", "lora.rnak=8"],
            2,
        ),
        ("scripts/evaluate.py --help", [py, "scripts/evaluate.py", "--help"], 0),
        ("scripts/evaluate.py, missing COCO file", [py, "scripts/evaluate.py", "--coco", str(tmp / "no.json")], 2),
        ("train_sam3_lora_native.py --help", [py, "train_sam3_lora_native.py", "--help"], 0),
        (
            "train_sam3_lora_native.py, missing config",
            [py, "train_sam3_lora_native.py", "--config", str(tmp / "no.yaml")],
            2,
        ),
        ("infer_sam.py, corrupt PNG", [*infer, "--weights", "none", "--image", str(corrupt)], 2),
        ("infer_sam.py, 4D NIfTI without --volume-index", [*infer, "--weights", "none", "--image", str(four_d)], 2),
        (
            "infer_sam.py, model.name a missing folder",
            [*infer, "--weights", "none", "--image", str(image), "--set", f"model.name={tmp}/no_model"],
            2,
        ),
        (
            "infer_sam.py, --device cuda without a GPU",
            [*infer, "--weights", "demo", "--image", str(image), "--device", "cuda"],
            2,
        ),
        (
            "infer_sam.py, --weights a missing local .pt",
            [*infer, "--image", str(image), "--weights", "/nonexistent/best_lora_weights.pt"],
            2,
        ),
        ("infer_sam.py, --image a folder of PNGs", [*infer, "--weights", "none", "--image", str(not_dicom)], 2),
        ("infer_sam.py, --image README.md", [*infer, "--weights", "none", "--image", "README.md"], 2),
        (
            "infer_sam.py, --box with x2 < x1",
            [*infer, "--weights", "none", "--image", str(image), "--box", "5", "5", "1", "1"],
            2,
        ),
        (
            "infer_sam.py, unknown concept on the demo",
            [py, "infer_sam.py", "--weights", "demo", "--image", demo_slice, "--prompt", "pancreas"],
            2,
        ),
        ("convert_medsam3_lora.py --help", [py, "scripts/convert_medsam3_lora.py", "--help"], 0),
        ("medsam3-app, port in use", [py, "-m", "medsam3.app", "--weights", "demo", "--port", str(busy_port)], 2),
        ("reference: import torch, transformers", [py, "-c", "import torch, transformers"], 0),
    ]


def time_once(argv: list[str], expected: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(argv)}: exit code {done.returncode}, expected {expected}\n{done.stderr}")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if expected == 2 and (len(lines) != 1 or "error:" not in lines[0]):
        raise SystemExit(f"{' '.join(argv)}: expected one 'error:' line on stderr, got:\n{done.stderr}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("-k", default="", help="only the commands whose description contains this text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rows = []
        for what, argv, expected in commands(Path(tmp), busy.getsockname()[1]):
            if args.k not in what and not what.startswith("reference"):
                continue
            time_once(argv, expected)  # warm the file cache
            times = [time_once(argv, expected) for _ in range(args.runs)]
            rows.append((what, statistics.median(times), max(times)))
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  median s  worst s")
    for what, median, worst in rows:
        flag = "" if what.startswith("reference") or worst < TARGET_S else f"  over {TARGET_S} s"
        print(f"{what:<{width}}  {median:8.2f}  {worst:7.2f}{flag}")
    reference = rows[-1][1]
    slowest = max(r[1] for r in rows[:-1])
    print(f"slowest command median {slowest:.2f} s = {slowest / reference:.2f}x the torch+transformers import alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
