"""torchrun batch inference (2 processes, gloo, CPU): same files as one process; a killed rank resumes.

The runs are real subprocesses (``python -m torch.distributed.run``) of ``infer_sam.py`` on a tiny
SAM3 checkpoint, one thread each so both sides compute bit-identical numbers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medsam3.inference.distributed import path_bytes, shard_by_size
from medsam3.inference.inputs import discover_inputs
from tests.conftest import SUBPROCESS_ENV, python_cmd, run_process, torchrun_cmd

PROMPTS = ["liver", "tumor"]


# ------------------------------------------------------------------------------------------ sharding
def test_shard_by_size_balances_bytes_not_counts():
    sizes = [100, 1, 1, 1, 1, 1, 1, 1, 1, 90]
    shards = shard_by_size(sizes, 2)
    assert sorted(i for s in shards for i in s) == list(range(10))  # every input exactly once
    assert all(s == sorted(s) for s in shards)  # each rank in input order
    totals = [sum(sizes[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= 10  # a split by count (5 + 5) would be 104 vs 95... or 190 vs 9
    assert {0, 9} not in [set(s) & {0, 9} for s in shards]  # the two big ones on different ranks
    assert shard_by_size(sizes, 2) == shards  # deterministic: every rank computes the same split
    assert shard_by_size([], 3) == [[], [], []]
    with pytest.raises(ValueError):
        shard_by_size([1], 0)


# ------------------------------------------------------------------------------------------ inputs
def _images(d: Path, rng, n: int) -> None:
    for i in range(n):
        h, w = 40 + 9 * i, 70 - 4 * i
        img = (rng.random((h, w, 3)) * 200).astype(np.uint8)
        img[5:25, 10:40] = 240
        Image.fromarray(img).save(d / f"img{i}.png")


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory) -> Path:
    """10 inputs: 5 PNG, a 16-bit TIFF, a DICOM, a NIfTI volume, and 2 corrupt files."""
    from pydicom.data import get_testdata_file

    d = tmp_path_factory.mktemp("mixed10")
    rng = np.random.default_rng(0)
    _images(d, rng, 5)
    tifffile.imwrite(d / "scan.tif", (rng.random((64, 48)) * 60000).astype(np.uint16))
    dcm = get_testdata_file("CT_small.dcm", download=False)
    if dcm is None:
        pytest.skip("pydicom's CT_small.dcm is not installed")
    shutil.copy(dcm, d / "CT_small.dcm")
    data = rng.normal(0, 100, (24, 20, 4)).astype(np.float32)
    nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0])).to_filename(d / "vol.nii.gz")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    full = (d / "vol.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    assert len(discover_inputs(d)) == 10
    return d


def _batch_args(config: Path, inputs: Path, out: Path, *extra, quiet: bool = True) -> list:
    return [
        "--config",
        config,
        "--input-dir",
        inputs,
        "--prompt",
        *PROMPTS,
        "--output-dir",
        out,
        "--weights",
        "none",
        "--threshold",
        "0",  # the tiny random model scores low: keep detections, so the COCO file has content
        "--montage",
        "0",
        *(["-q"] if quiet else []),
        *extra,
    ]


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("seconds")
    return sorted(rows, key=lambda r: (r["file"], r["prompt"]))


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow  # two torchrun ranks: ~30 s on 2 idle cores
def test_two_ranks_write_what_one_process_writes(tmp_path, tiny_config, mixed_inputs):
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_process(python_cmd("infer_sam.py", *_batch_args(tiny_config, mixed_inputs, one)), tmp_path)
    assert single.returncode == 1, single.stderr[-3000:]  # 2 corrupt inputs
    multi = run_process(
        torchrun_cmd("infer_sam.py", *_batch_args(tiny_config, mixed_inputs, two, quiet=False)), tmp_path
    )
    assert multi.returncode != 0, "a failed input must fail the torchrun job too"
    assert "rank 0 of 2" in multi.stderr and "rank 1 of 2" in multi.stderr, multi.stderr[-3000:]

    coco = (one / "coco_results.json").read_bytes()
    assert len(json.loads(coco)) > 0
    assert (two / "coco_results.json").read_bytes() == coco
    assert (two / "coco_images.json").read_bytes() == (one / "coco_images.json").read_bytes()
    assert (two / "failures.json").read_bytes() == (one / "failures.json").read_bytes()
    failures = json.loads((one / "failures.json").read_text())
    assert failures["total"] == 10 and failures["failed"] == 2
    assert {Path(f["file"]).name for f in failures["failures"]} == {"broken.png", "truncated.nii.gz"}
    rows = _summary(one)
    assert rows == _summary(two) and len(rows) == 8 * len(PROMPTS) + 2
    assert not list(two.glob("summary.rank*.csv")) and not list(two.glob("*.tmp*"))
    # each input's folder written once, by one rank, with the same content
    for name in ("img0", "scan", "CT_small"):
        a, b = (
            json.loads((one / name / "detections.json").read_text()),
            json.loads((two / name / "detections.json").read_text()),
        )
        for rec in (a, b):
            rec.pop("seconds")
            for row in rec["summary_rows"]:
                row.pop("seconds")
        assert a == b
    assert (two / "vol" / "labels.nii.gz").is_file()


def _worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (children of the agent ``parent``)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks:
            out[int(ranks[0])] = int(stat.parent.name)
    return out


@pytest.mark.slow  # two torchrun ranks: ~30 s on 2 idle cores
def test_a_killed_rank_resumes_with_skip_existing(tmp_path, tiny_config):
    """One rank hangs on an input (a FIFO nobody writes: a stalled network share) and is killed.

    The other rank's inputs and the dead rank's earlier ones are on disk; the rerun skips them all.
    """
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    _images(inputs, np.random.default_rng(1), 6)
    stall = inputs / "zz_stall.png"  # last in input order: the hanging rank has finished its others
    os.mkfifo(stall)
    paths = discover_inputs(inputs)
    shards = shard_by_size([path_bytes(p) for p in paths], 2)
    stalled_rank = next(r for r, s in enumerate(shards) if paths.index(stall) in s)
    others = [p for p in paths if p != stall]

    proc = subprocess.Popen(
        torchrun_cmd("infer_sam.py", *_batch_args(tiny_config, inputs, out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not all((out / p.stem / "detections.json").is_file() for p in others):
            assert proc.poll() is None and time.monotonic() < deadline, "the batch did not get going"
            time.sleep(0.3)
        workers = _worker_pids(proc.pid)
        assert set(workers) == {0, 1}
        os.kill(workers[stalled_rank], signal.SIGKILL)  # a crash of one rank
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert not (out / "summary.csv").exists()  # nothing merged from a failed run: no torn summary
    done = {p.stem: (out / p.stem / "detections.json").stat().st_mtime_ns for p in others}

    stall.unlink()
    Image.fromarray(np.full((30, 30, 3), 128, np.uint8)).save(stall)
    rerun = run_process(
        torchrun_cmd("infer_sam.py", *_batch_args(tiny_config, inputs, out, "--skip-existing", quiet=False)), tmp_path
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {stem: (out / stem / "detections.json").stat().st_mtime_ns for stem in done} == done  # not redone
    assert rerun.stderr.count(": already done in ") == len(others)
    assert (out / "zz_stall" / "detections.json").is_file()
    rows = _summary(out)
    assert sorted({Path(r["file"]).name for r in rows}) == sorted(p.name for p in paths)
    assert all(r["status"] == "ok" for r in rows) and len(rows) == len(paths) * len(PROMPTS)
    assert [im["id"] for im in json.loads((out / "coco_images.json").read_text())["images"]] == list(
        range(1, len(paths) + 1)
    )
    assert not list(out.glob("summary.rank*.csv"))


def test_torchrun_single_image_is_refused(tmp_path, tiny_config, rgb_image):
    Image.fromarray(rgb_image).save(tmp_path / "x.png")
    proc = run_process(
        torchrun_cmd(
            "infer_sam.py",
            "--config",
            tiny_config,
            "--weights",
            "none",
            "--image",
            tmp_path / "x.png",
            "--prompt",
            "liver",
            "-q",
        ),
        tmp_path,
    )
    assert proc.returncode != 0
    assert "infer_sam.py: error: torchrun splits --input-dir batches" in proc.stderr
