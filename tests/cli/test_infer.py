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
from tests.conftest import REPO, run_cli

PROMPTS = ["liver", "tumor", "left kidney"]


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
    factor = overlay.shape[1] // rgb_image.shape[1]  # a small image is enlarged so its labels stay readable
    assert factor * rgb_image.shape[1] == overlay.shape[1] and overlay.shape[0] > factor * rgb_image.shape[0]
    picture = overlay[::factor, ::factor][: rgb_image.shape[0]]
    assert picture.shape == rgb_image.shape and not np.array_equal(picture, rgb_image)

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
        ("missing_weights", "no such file or folder"),
        ("no_auto_weights", "pass --weights PATH_OR_HUB_ID, or --weights none"),
        ("bad_config", "lora.rnak: unknown key; did you mean 'lora.rank'?"),
        ("bad_override", "expected integer"),
        ("missing_model", "no such directory"),
        ("list_config_with_set", "the top level must be a mapping"),
        ("scalar_config", "the top level must be a mapping"),
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
        args += ["--weights", "none"]  # else the missing adapter is reported first
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
    elif case in ("list_config_with_set", "scalar_config"):
        bad = tmp_path / "notamapping.yaml"
        bad.write_text("- model\n- lora\n" if case == "list_config_with_set" else "42\n")
        args[1] = bad
        args += ["--set", "lora.rank=8"] if case == "list_config_with_set" else []
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


def test_default_overlay_goes_beside_the_image(tmp_path, tiny_config, image_file, monkeypatch):
    """Not into whatever folder the command was started from."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_cli("--config", tiny_config, "--image", image_file, "--prompt", "liver", "--weights", "none", "-q") == 0
    assert (image_file.parent / "scan_medsam3.png").is_file() and not list(elsewhere.iterdir())


def test_help_examples_version_and_verbosity_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:")[1].split("exit codes:")[0].splitlines()
    # every example is a command, or the continuation of the one before it (a line ending in " \\")
    for before, line in zip([""] + examples, examples):
        if line.strip():
            assert line.lstrip().startswith(("python ", "torchrun ")) or before.endswith(" \\"), line
    for flag in ("--volume-index", "--verbose", "--quiet", "--version"):
        assert flag in text
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    from importlib.metadata import version

    from medsam3 import __version__

    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"infer_sam.py (medsam3 {__version__})"
    assert __version__ == version("medsam3"), "medsam3.__version__ and pyproject's version disagree"


_NO_TORCH_CHECK = """
import runpy, sys
sys.argv = [{script!r}, *{args!r}]
code = 0
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("CODE", code, "HEAVY", sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "script, args, code",
    [
        ("infer_sam.py", ["--help"], 0),
        ("infer_sam.py", ["--version"], 0),
        ("infer_sam.py", ["--image", "{tmp}/nope.png", "--prompt", "liver"], 2),
        ("infer_sam.py", ["--image", "{tmp}", "--prompt", "liver", "--set", "lora.rnak=8"], 2),
        ("infer_sam.py", ["--image", "{tmp}", "--prompt", " "], 2),
        ("scripts/evaluate.py", ["--help"], 0),
        ("scripts/evaluate.py", ["--version"], 0),
        ("scripts/evaluate.py", ["--coco", "{tmp}/nope.json"], 2),
        ("train_sam3_lora_native.py", ["--help"], 0),
        ("train_sam3_lora_native.py", ["--version"], 0),
        ("train_sam3_lora_native.py", ["--config", "{tmp}/nope.yaml"], 2),
    ],
)
def test_help_and_mistakes_answer_before_torch_is_imported(tmp_path, script, args, code):
    """What makes them quick (scripts/bench_cli_startup.py measures it): torch never loads."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    check = _NO_TORCH_CHECK.format(script=str(REPO / script), args=args)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip().splitlines()[-1] == f"CODE {code} HEAVY []", done.stdout + done.stderr


def test_weight_loading_bar_hidden_download_bars_kept(monkeypatch):
    """transformers' "Loading weights" bar (every run) goes; hub download bars (first run) stay."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    from medsam3.console import quiet_weight_loading

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        hf_logging.enable_progress_bar()
        quiet_weight_loading(verbose=True)
        assert hf_logging.is_progress_bar_enabled()
        quiet_weight_loading(verbose=False)
        assert not hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
        quiet_weight_loading(verbose=False, quiet=True)  # -q: no bars at all
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
