"""infer_sam.py end to end on a tiny SAM3 checkpoint built by the tests."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medsam3.cli.infer import main
from medsam3.config import load_config
from medsam3.inference.predictor import Predictor
from medsam3.outputs import decode_rle
from tests.conftest import REPO

PROMPTS = ["liver", "tumor", "left kidney"]


@pytest.fixture
def image_file(tmp_path, rgb_image):
    path = tmp_path / "scan.png"
    Image.fromarray(rgb_image).save(path)
    return path


def run_cli(*args):
    return main([str(a) for a in args])


def test_cli_writes_overlay_json_and_masks_matching_the_predictor(tmp_path, tiny_config, image_file, rgb_image):
    out_png, out_json, masks_dir = tmp_path / "out.png", tmp_path / "res.json", tmp_path / "masks"
    code = run_cli(
        "--config",
        tiny_config,
        "--image",
        image_file,
        "--prompt",
        *PROMPTS,
        "--weights",
        "none",
        "--threshold",
        "0.2",
        "--output",
        out_png,
        "--json",
        out_json,
        "--masks-dir",
        masks_dir,
        "-q",
    )
    assert code == 0

    overlay = np.asarray(Image.open(out_png))
    assert overlay.shape == rgb_image.shape and not np.array_equal(overlay, rgb_image)

    predictor = Predictor.from_config(load_config(tiny_config), weights="none")
    predictor.set_image(rgb_image)
    expected = predictor.predict(PROMPTS, threshold=0.2, nms_iou=0.5)
    assert sum(len(d) for d in expected) > 0, "the test needs detections to compare"

    data = json.loads(out_json.read_text())
    assert (data["height"], data["width"]) == rgb_image.shape[:2]
    assert [p["prompt"] for p in data["prompts"]] == PROMPTS
    for entry, det in zip(data["prompts"], expected):
        assert entry["num_detections"] == len(det)
        for d, score, box, mask in zip(entry["detections"], det.scores, det.boxes, det.masks):
            assert d["score"] == pytest.approx(float(score), abs=1e-6)
            np.testing.assert_allclose(d["box_xyxy"], box, atol=1e-3)
            np.testing.assert_array_equal(decode_rle(d["mask"]), mask)

    pngs = sorted(masks_dir.glob("*.png"))
    assert [p.name for p in pngs] == ["00_liver.png", "01_tumor.png", "02_left_kidney.png"]
    for png, det in zip(pngs, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(png)) > 0, det.semantic_mask())


def test_cli_box_prompt(tmp_path, tiny_config, image_file):
    out_json = tmp_path / "res.json"
    assert (
        run_cli(
            "--config",
            tiny_config,
            "--image",
            image_file,
            "--prompt",
            "liver",
            "--weights",
            "none",
            "--box",
            10,
            10,
            60,
            60,
            "--threshold",
            "0",
            "--output",
            tmp_path / "o.png",
            "--json",
            out_json,
            "-q",
        )
        == 0
    )
    assert json.loads(out_json.read_text())["prompts"][0]["num_detections"] > 0


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_image", "image not found"),
        ("unreadable_image", "scan_broken.png"),
        ("empty_prompt", "empty --prompt"),
        ("missing_weights", "adapter not found"),
        ("no_auto_weights", "pass --weights PATH_OR_HUB_ID, or --weights none"),
        ("bad_config", "lora.rnak: unknown key; did you mean 'lora.rank'?"),
        ("bad_override", "expected integer"),
        ("missing_model", "no such directory"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, tiny_config, image_file, capsys, case, expected):
    args = ["--config", tiny_config, "--image", image_file, "--prompt", "liver", "--output", tmp_path / "o.png"]
    if case == "missing_image":
        args[3] = tmp_path / "nope.png"
    elif case == "unreadable_image":
        broken = tmp_path / "scan_broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        args[3] = broken
    elif case == "empty_prompt":
        args[5] = " "
    elif case == "missing_weights":
        args += ["--weights", tmp_path / "nowhere" / "best_lora_weights.pt"]
    elif case == "bad_config":
        bad = tmp_path / "bad.yaml"
        bad.write_text(tiny_config.read_text().replace("  rank: 16", "  rnak: 16"))
        args[1] = bad
    elif case == "bad_override":
        args += ["--set", "lora.rank=big"]
    elif case == "missing_model":
        args += ["--weights", "none", "--set", f"model.name={tmp_path / 'no_model'}"]
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infer_sam.py: error:"), err
    assert expected in err[0]
    assert not (tmp_path / "o.png").exists()


def test_script_entry_point(tmp_path, tiny_config, image_file):
    """The root script as users run it: help, success, and the exit code of a bad input."""
    script = REPO / "infer_sam.py"
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--prompt" in help_text and "--weights" in help_text and "examples:" in help_text
    ok = subprocess.run(
        [
            sys.executable,
            script,
            "--config",
            tiny_config,
            "--image",
            image_file,
            "--prompt",
            "liver",
            "--weights",
            "none",
            "--output",
            tmp_path / "o.png",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o.png").is_file() and "'liver':" in ok.stderr
    bad = subprocess.run(
        [sys.executable, script, "--config", tiny_config, "--image", tmp_path / "x.png", "--prompt", "liver"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
