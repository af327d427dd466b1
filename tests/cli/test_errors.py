"""Bad input is one line and exit 2, before torch loads; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medsam3.cli import infer

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI in a fresh interpreter and reports its exit code and whether torch was ever imported.
PROBE = """
import json, sys
from medsam3.cli.infer import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _probe(*args: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--image", "does/not/exist.png", "--prompt", "liver"], "image not found: does/not/exist.png"),
        (["--image", "README.md", "--prompt", "liver"], "unsupported file extension '.md'"),
        (["--image", "README.md", "--prompt", "liver", "--box", "5", "5", "1", "1"], "needs X1 < X2 and Y1 < Y2"),
        (["--image", "README.md", "--prompt", "liver", "--threshold", "2"], "--threshold must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_torch_loads(args, expected):
    result, stderr = _probe("--weights", "none", *args)
    assert result == {"code": 2, "torch": False, "transformers": False}
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("infer_sam.py: error: ") and expected in lines[0]


def test_a_value_error_from_inside_medsam3_is_a_bug_with_a_traceback(monkeypatch, capsys, tmp_path):
    def broken(*_args, **_kwargs):
        raise ValueError("operands could not be broadcast together")  # what a numpy bug looks like

    monkeypatch.setattr("medsam3.adapters.plan.plan_run", broken)
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    code = infer.main(["--image", str(image), "--prompt", "liver", "--weights", "none"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "operands could not be broadcast together" in err
    assert "this is a bug in medsam3" in err and "infer_sam.py: error:" not in err


@pytest.mark.slow
def test_every_error_path_of_the_startup_benchmark_is_one_line_and_exit_2():
    """scripts/bench_cli_startup.py checks each path's exit code and single error line on every run."""
    proc = subprocess.run(
        [sys.executable, "scripts/bench_cli_startup.py", "--runs", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unknown concept on the demo" in proc.stdout and "port in use" in proc.stdout


def test_output_cut_off_by_its_reader_is_not_reported_as_a_bug():
    """`infer_sam.py --list-concepts | head -1`: the reader leaves early; exit 141 quietly, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "infer_sam.py"), "--weights", "demo", "--list-concepts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # before the command writes anything (it is still importing)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "bug" not in stderr
