"""Training checks its data before the model: a wrong data folder is reported first, even when the
model could not be loaded either (with the real SAM3 that would be after a 3 GB download)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsam3.cli.train import main as train_main
from medsam3.config import load_config
from medsam3.train.trainer import train
from tests.conftest import REPO
from tests.train.conftest import tiny_train_config


@pytest.fixture
def bad_config(tmp_path):
    # Neither the model nor the data exist: which error comes first is the point.
    return tiny_train_config(tmp_path, tmp_path / "no_such_model", tmp_path / "no_such_data")


def test_missing_data_folder_is_reported_before_the_model_is_loaded(bad_config, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data directory not found: {tmp_path / 'no_such_data'}"):
        train(load_config(bad_config), show_progress=False)


def test_missing_annotation_file_is_reported_before_the_model(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)  # a folder, but no _annotations.coco.json in it
    config = tiny_train_config(tmp_path, tmp_path / "no_such_model", data)
    with pytest.raises(FileNotFoundError, match="_annotations.coco.json"):
        train(load_config(config), show_progress=False)


def test_cli_reports_the_data_error_in_one_line_before_importing_torch(bad_config, tmp_path):
    code = (
        "import sys; from medsam3.cli.train import main; rc = main(sys.argv[1:]); "
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "--config", str(bad_config)], capture_output=True, text=True, cwd=REPO
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"train_sam3_lora_native.py: error: data directory not found: {tmp_path / 'no_such_data'}"
    ]
    assert run.stdout.strip() == "torch not imported"


def test_cli_in_process_exit_code(bad_config, capsys):
    assert train_main(["--config", str(bad_config), "-q"]) == 2
    assert "data directory not found" in capsys.readouterr().err
