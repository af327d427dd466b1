"""scripts/device_check.sh runs end to end on CPU (--quick) and writes the JSON a GPU run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_device_check_quick_on_cpu_writes_one_json(tmp_path):
    out = tmp_path / "device_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_check.sh"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["quick"] is True
    inf = report["inference"]
    assert inf["prompts"] == 8 and inf["precision"] == "bf16"
    assert 0 < inf["ms_per_image_1_prompt"] < inf["ms_per_image_all_prompts"]
    assert [r["gradient_checkpointing"] for r in report["training"]] == [False, True]
    assert all(r["seconds_per_step"] > 0 for r in report["training"])
    assert report["volume"]["batched_slices_per_s"] > 0
    assert "inference:" in proc.stdout and "training:" in proc.stdout and "volume:" in proc.stdout


def test_device_check_refuses_cuda_without_a_gpu_and_bad_arguments(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    script = str(REPO / "scripts" / "device_check.sh")
    bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr
    nogpu = subprocess.run(["bash", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert nogpu.returncode == 2 and "no CUDA device" in nogpu.stderr
    assert not (tmp_path / "device_check.json").exists()
