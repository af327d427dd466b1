"""``python -m medsam3.testing``: the offline stand-ins a user can try the commands with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medsam3 import testing
from medsam3.cli.infer import main as infer_main

REPO = Path(__file__).resolve().parents[1]


def test_help_explains_and_creates_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medsam3.testing", "--help"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0 and "--video" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no folder named --help


def test_tiny_video_model_runs_the_video_command_offline(tmp_path, capsys):
    target = tmp_path / "tiny_video"
    assert testing.main([str(target), "--video"]) == 0
    assert "--video" in capsys.readouterr().out
    out = tmp_path / "tracked"
    args = ["--set", f"model.name={target}", "--weights", "none", "--video", str(target / "frames")]
    assert infer_main([*args, "--prompt", "liver", "--output-dir", str(out), "-q"]) == 0
    tracks = json.loads((out / "tracks.json").read_text())
    assert (out / "overlay.mp4").stat().st_size > 0 and tracks["prompts"] == ["liver"]
