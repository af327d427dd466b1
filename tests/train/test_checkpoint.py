"""Checkpoints survive a full disk and a ``kill -9`` mid-save: the earlier ones stay whole and
``--resume latest`` continues to the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsam3.cli.train import main as train_main
from medsam3.train.checkpoint import TRAINABLE, list_checkpoints, load_trainer_state
from tests.conftest import single_torch_thread
from tests.train.conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
TRAINING = dict(max_steps=STEPS, num_epochs=10, save_steps=1, save_total_limit=10, eval_steps=100)


def _adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def _log_steps(output_dir: Path) -> list[tuple]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [(r.get("kind", r.get("type")), r["step"]) for r in map(json.loads, lines)]


def _intact(checkpoint: Path) -> None:
    """Every file of a checkpoint reads back: the trainer state, the trainable tensors, the adapter."""
    state = load_trainer_state(checkpoint)
    assert state["global_step"] == int(checkpoint.name.split("-")[1])
    assert load_file(str(checkpoint / TRAINABLE))
    assert _adapter(checkpoint)


def _config(tmp_path: Path, name: str, tiny_checkpoint, shapes_dir, output_dir: Path) -> Path:
    run = tmp_path / name
    run.mkdir()
    path = tiny_train_config(
        run, tiny_checkpoint, shapes_dir, training=TRAINING, output={"output_dir": str(output_dir)}
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Adapters equal to the bit across runs need one torch thread: with two, some CPU reductions of
    the backward pass add in a run-dependent order (the full-disk test failed that way on 2 cores)."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint, shapes_dir) -> Path:
    """The same 6 steps without faults: what every interrupted run must end at."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    cfg = _config(tmp_path, "full", tiny_checkpoint, shapes_dir, tmp_path / "full_out")
    assert train_main(["--config", str(cfg), "--quiet"]) == 0
    return tmp_path / "full_out"


def test_full_disk_during_a_checkpoint_keeps_the_earlier_ones_and_resume_finishes(
    tmp_path, tiny_checkpoint, shapes_dir, small_disk, uninterrupted, capsys
):
    one = sum(f.stat().st_size for f in (uninterrupted / "checkpoint-1").iterdir())
    disk = small_disk(f"{(2 * one) // 1024 + 64}k")  # room for about two checkpoints, not four
    out = disk.path / "run"
    cfg = _config(tmp_path, "full_disk", tiny_checkpoint, shapes_dir, out)

    assert train_main(["--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    saved = list_checkpoints(out)
    assert 1 <= len(saved) < STEPS
    failed = f"checkpoint-{len(saved) + 1}"
    assert ": error: no space left on the device while writing the checkpoint" in err[0], err[0]
    assert str(out / failed) in err[0] and "--resume" in err[0]
    for checkpoint in saved:
        _intact(checkpoint)
        ref = _adapter(uninterrupted / checkpoint.name)
        got = _adapter(checkpoint)
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp", ".old"))]  # the partial one is gone

    disk.resize("64m")  # space freed
    assert train_main(["--config", str(cfg), "--resume", "latest", "--quiet"]) == 0
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    a, b = _adapter(uninterrupted / "last_lora_weights"), _adapter(out / "last_lora_weights")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


KILL_DURING_SAVE = """
import os, signal, sys
import torch
calls = []
real_save = torch.save
def save_then_die(obj, f, *args, **kwargs):  # torch's own writer, then SIGKILL before the rename
    real_save(obj, f, *args, **kwargs)
    calls.append(f)
    if len(calls) == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
from medsam3.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # ~15 s: two training processes, one killed (the default run stays near 5 minutes)
def test_kill_9_during_a_checkpoint_save_then_resume(tmp_path, tiny_checkpoint, shapes_dir, uninterrupted):
    out = tmp_path / "killed_out"
    cfg = _config(tmp_path, "killed", tiny_checkpoint, shapes_dir, out)
    env = {**os.environ, "KILL_AT_SAVE": "3", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, "--config", str(cfg), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    # killed inside checkpoint-3's save: 1 and 2 are whole, 3 is only a hidden temporary folder
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert [p for p in out.iterdir() if p.name.startswith(".tmp-checkpoint-3")]
    for checkpoint in list_checkpoints(out):
        _intact(checkpoint)

    assert train_main(["--config", str(cfg), "--resume", "latest", "--quiet"]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp", ".old"))]  # the debris was removed
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    a, b = _adapter(uninterrupted / "last_lora_weights"), _adapter(out / "last_lora_weights")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    # the log continues where the checkpoint was taken: the same lines as the uninterrupted run's
    assert _log_steps(out) == _log_steps(uninterrupted)


def test_an_interrupted_replacement_is_put_back(tmp_path):
    """``kill -9`` between the two renames that replace best_lora_weights/: the old one is restored."""
    from medsam3.train.checkpoint import remove_stale_tmp

    (tmp_path / ".old-best_lora_weights-1234").mkdir()
    (tmp_path / ".old-best_lora_weights-1234" / "adapter_model.safetensors").write_bytes(b"old")
    (tmp_path / ".tmp-best_lora_weights-abc").mkdir()
    removed = remove_stale_tmp(tmp_path)
    assert [p.name for p in removed] == [".tmp-best_lora_weights-abc"]
    assert (tmp_path / "best_lora_weights" / "adapter_model.safetensors").read_bytes() == b"old"
