"""--window on 2D medical inputs (choice logged) and --output-dir for a single 2D image."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from medsam3.cli.infer import main
from medsam3.io import read_rgb


@pytest.fixture
def tiff16(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "xray.tif"
    tifffile.imwrite(path, (rng.random((70, 50)) * 4000 + 1000).astype(np.uint16))
    return path


@pytest.mark.parametrize(
    "window, logged",
    [
        ([], "percentile scaling p0.5-p99.5"),
        (["--window", "3000", "2000"], "window custom (L3000 W2000)"),
    ],
)
def test_window_on_16bit_tiff_is_applied_and_logged(tmp_path, tiny_config, tiff16, caplog, window, logged):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert (
        main(
            [
                *map(
                    str,
                    [
                        "--config",
                        tiny_config,
                        "--image",
                        tiff16,
                        "--prompt",
                        "liver",
                        "--weights",
                        "none",
                        "--output-dir",
                        out,
                        "--threshold",
                        "0.1",
                    ],
                ),
                *window,
            ]
        )
        == 0
    )
    assert logged in caplog.text
    record = json.loads((out / "detections.json").read_text())
    assert logged in record["intensity"] and record["prompts"][0]["prompt"] == "liver"
    overlay = np.asarray(Image.open(out / "overlay.png"))
    rgb = read_rgb(tiff16, (3000.0, 2000.0) if window else None)
    factor = overlay.shape[1] // rgb.shape[1]  # small images are enlarged, the legend is a strip below
    assert overlay.shape[1] == factor * rgb.shape[1] and overlay.shape[0] > factor * rgb.shape[0]
    assert not (tmp_path / "output.png").exists()


def test_window_preset_on_ct_dicom(tmp_path, tiny_config, caplog):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm", download=False)
    if src is None:
        pytest.skip("pydicom's CT_small.dcm is not installed")
    path = shutil.copy(src, tmp_path / "ct.dcm")
    caplog.set_level(logging.INFO)
    assert (
        main(
            [
                "--config",
                str(tiny_config),
                "--image",
                str(path),
                "--prompt",
                "liver",
                "--weights",
                "none",
                "--window",
                "lung",
                "--output",
                str(tmp_path / "o.png"),
                "-q",
            ]
        )
        == 0
    )
    assert "CT window lung (L-600 W1500)" in caplog.text
    assert (tmp_path / "o.png").is_file()
