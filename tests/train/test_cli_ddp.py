"""The training CLI (one-line errors, exit 2), upstream's --device list, and a 2-process torchrun (gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medsam3.cli.train import _device_override, main
from tests.train.conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[2]


def test_cli_trains_and_resumes(tmp_path, tiny_checkpoint, shapes_dir, capsys):
    cfg = tiny_train_config(tmp_path, tiny_checkpoint, shapes_dir, training={"max_steps": 2, "save_steps": 1})
    assert main(["--config", str(cfg), "--no-progress", "-q"]) == 0
    out = tmp_path / "outputs"
    assert (out / "checkpoint-2").is_dir() and (out / "last_lora_weights").is_dir()
    assert main(["--config", str(cfg), "--no-progress", "-q", "--resume", "--set", "training.max_steps=3"]) == 0
    steps = [
        json.loads(line)["step"]
        for line in (out / "train_log.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    ]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--set", "training.batchsize=2"], "did you mean 'training.batch_size'"),
        (["--resume"], "no checkpoint"),
        (["--set", "training.data_dir=/nonexistent/data"], "data directory not found"),
        (["--device", "0", "x"], "several devices must be GPU indices"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, tiny_checkpoint, shapes_dir, capsys, extra, expected):
    cfg = tiny_train_config(tmp_path, tiny_checkpoint, shapes_dir, training={"max_steps": 1})
    assert main(["--config", str(cfg), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_sam3_lora_native.py: error:") and expected in err[0]


def test_cli_dataset_without_usable_images(tmp_path, tiny_checkpoint, capsys):
    split = tmp_path / "bad" / "train"
    split.mkdir(parents=True)
    (split / "broken.png").write_bytes(b"not a png")
    (split / "_annotations.coco.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "broken.png", "width": 10, "height": 10},
                    {"id": 2, "file_name": "../escape.png", "width": 10, "height": 10},
                ],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[]]}],
                "categories": [{"id": 1, "name": "lesion"}, {"id": 2}],
            }
        )
    )
    cfg = tiny_train_config(tmp_path, tiny_checkpoint, tmp_path / "bad", training={"max_steps": 1})
    assert main(["--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and "skipped" in err


def test_device_list_parsing():
    assert _device_override(None) == (None, [])
    assert _device_override(["cpu"]) == ("cpu", [])
    assert _device_override(["1"]) == ("cuda:1", [])
    assert _device_override(["0", "1"]) == ("cuda", ["0", "1"])
    with pytest.raises(ValueError, match="repeated"):
        _device_override(["0", "0"])


@pytest.mark.slow  # two torchrun ranks: ~30 s on 2 idle cores
def test_torchrun_two_processes_gloo(tmp_path, tiny_checkpoint, shapes_dir):
    cfg = tiny_train_config(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training={
            "max_steps": 3,
            "num_epochs": 5,
            "save_steps": 2,
            "eval_steps": 3,
            "batch_size": 1,
            "gradient_accumulation_steps": 2,
        },
        lora={"dropout": 0.1},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "train_sam3_lora_native.py"),
            "--config",
            str(cfg),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d) adapter sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr[-2000:]
    out = tmp_path / "outputs"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # rank 0 alone writes: each step and each evaluation appears exactly once
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [3]
    assert sum(v["images"] for v in evals[0]["per_concept"].values()) == 8  # both ranks' shards reduced
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp", ".old"))]


@pytest.mark.slow  # ~15 s: two training processes, one interrupted (the default run stays near 5 minutes)
def test_ctrl_c_saves_a_checkpoint_at_the_step_reached_and_resume_continues(tmp_path, tiny_checkpoint, shapes_dir):
    import signal
    import time

    cfg = tiny_train_config(
        tmp_path,
        tiny_checkpoint,
        shapes_dir,
        training={"max_steps": 10000, "save_steps": 10000, "eval_steps": 10000, "logging_steps": 1, "batch_size": 1},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    log = tmp_path / "outputs" / "train_log.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train_sam3_lora_native.py"), "--config", str(cfg), "--no-progress"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    reached = steps[-1]
    assert steps == list(range(1, reached + 1)) and reached < 10000
    assert [p.name for p in (tmp_path / "outputs").iterdir() if p.name.startswith("checkpoint-")] == [
        f"checkpoint-{reached}"
    ]
    assert f"stopped at step {reached} of 10000" in err and "--resume" in err
    assert (
        main(["--config", str(cfg), "--no-progress", "-q", "--resume", "--set", f"training.max_steps={reached + 2}"])
        == 0
    )
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, reached + 3))
