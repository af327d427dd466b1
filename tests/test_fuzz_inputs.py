"""The short fuzz run (scripts/fuzz_inputs.py) over every reader target: mutated real files give a
result or a UserError, never another exception, a hang or a crash. The long run is the script itself."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "fuzz_inputs.py"
SHORT_RUN = int(os.environ.get("MEDSAM3_FUZZ_INPUTS", "300"))


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_inputs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


HARNESS = _harness()


@pytest.fixture
def quiet():
    """Readers log a warning for every odd file; hundreds of them are noise here."""
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("target", list(HARNESS.TARGETS))
def test_short_fuzz_run_finds_nothing(target, quiet):
    report = HARNESS.fuzz_target(target, max_inputs=SHORT_RUN, budget=120, seed=0, in_process=True)
    assert report.inputs >= SHORT_RUN
    assert report.ok + report.user_errors == report.inputs, {k: v[0] for k, v in report.findings.items()}
    assert report.ok > 0  # the seeds themselves read


def test_the_harness_reports_a_defect(quiet):
    """A reader that lets a library exception escape is a finding, grouped by type and place."""

    def leaky(path):
        raise KeyError(path.name)

    HARNESS.TARGETS["leaky"] = HARNESS.Target(HARNESS.config_seeds, leaky, ())
    try:
        report = HARNESS.fuzz_target("leaky", max_inputs=20, budget=60, seed=0, in_process=True)
    finally:
        del HARNESS.TARGETS["leaky"]
    assert report.ok == 0 and report.user_errors == 0
    [(signature, (count, _files, traceback))] = report.findings.items()
    assert signature.startswith("KeyError at test_fuzz_inputs.py:") and signature.endswith(" leaky")
    assert count == 20 and "KeyError" in traceback


def test_the_script_runs_inputs_in_a_bounded_worker(tmp_path):
    """The long-run path: a worker process per target, the summary line with inputs/s and failures."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--target", "config", "--max-inputs", "40", "--save-findings", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("config"))
    assert "inputs     40" in line and "/s" in line and "distinct failures 0" in line


def test_an_input_that_spins_is_stopped_and_reported(quiet):
    """5 s of CPU time per input, then the input is a 'hang' finding and the run goes on."""

    def spin(path):
        while True:
            path.exists()

    one_seed = lambda _tmp: [HARNESS.Seed("one", {"a.txt": b"x"}, "a.txt")]  # noqa: E731
    HARNESS.TARGETS["spin"] = HARNESS.Target(one_seed, spin, ())
    try:
        report = HARNESS.fuzz_target("spin", max_inputs=1, budget=60, seed=0, in_process=True)
    finally:
        del HARNESS.TARGETS["spin"]
    assert list(report.findings) == [f"hang over {HARNESS.TIME_LIMIT_S} s"]
