"""infer_sam.py without hub access and with a cold cache: exit 2 within 10 s, one line naming the base
model and the adapter and the command that fetches them (issue 11). No real network: HF_ENDPOINT is a
closed local port, or HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from tests.conftest import REPO, closed_port_url


@pytest.mark.parametrize("offline_env", [None, "1"], ids=["HF_HUB_OFFLINE unset", "HF_HUB_OFFLINE=1"])
def test_cold_cache_without_hub_exits_2_quickly_with_one_line(tmp_path, rgb_image, offline_env):
    image = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(image)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=closed_port_url())
    if offline_env is not None:
        env["HF_HUB_OFFLINE"] = offline_env
    cmd = [sys.executable, str(REPO / "infer_sam.py"), "--weights", "lal-Joey/MedSAM3_v1", "--image", str(image)]
    t0 = time.perf_counter()
    run = subprocess.run([*cmd, "--prompt", "liver"], capture_output=True, text=True, env=env, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("infer_sam.py: error: ")
    assert "base model facebook/sam3, adapter lal-Joey/MedSAM3_v1" in errors[0]
    assert "medsam3-download --weights lal-Joey/MedSAM3_v1" in errors[0]
    assert "HF_HUB_OFFLINE=0" not in errors[0] and ".." not in errors[0]
    assert seconds < 10, f"took {seconds:.1f} s"  # the bound; measured ~1 s (no torch import, one probe)


def test_training_offline_with_a_cold_cache_names_the_base_model_first(tmp_path):
    from tests.train.conftest import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "train_sam3_lora_native.py"), "--set", f"training.data_dir={data}"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("train_sam3_lora_native.py: error: offline mode is on")
    assert ": base model facebook/sam3. " in errors[0] and "`medsam3-download`" in errors[0]
