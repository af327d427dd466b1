"""A closed-vocabulary model does not silently relabel organs: unknown prompts are refused or marked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medsam3.adapters.plan import UnknownConceptError, plan_run
from medsam3.cli.infer import main as infer_main
from medsam3.config import load_config

REPO = Path(__file__).resolve().parents[2]
SLAB = REPO / "medsam3" / "demo" / "examples" / "ct_abdomen_slab.nii.gz"
SLICE = REPO / "medsam3" / "demo" / "examples" / "ct_dicom_slice.dcm"


def test_unknown_prompt_is_refused_in_one_line_naming_close_concepts():
    proc = subprocess.run(
        [sys.executable, "infer_sam.py", "--weights", "demo", "--image", str(SLAB), "--prompt", "kidney"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("infer_sam.py: error: prompt 'kidney' is not a concept this model was trained on")
    assert "'left kidney'" in line and "'right kidney'" in line and "--allow-unknown" in line


def test_open_vocabulary_weights_run_any_prompt(tiny_config):
    plan = plan_run(load_config(tiny_config), "none", check_hub=False)
    assert plan.check_prompts(["pancreas"]) == []  # plain SAM3 records no concepts: nothing is unknown
    demo = plan_run(load_config(None), "demo", check_hub=False)
    with pytest.raises(UnknownConceptError, match="known concepts: 'aorta', 'brain', 'brain tumor', 'left kidney'"):
        demo.check_prompts(["liver", "pancreas"])
    assert demo.check_prompts(["Liver"]) == []  # case does not make a concept unknown


def _legend(out_dir: Path) -> dict:
    return {e["prompt"]: e for e in json.loads((out_dir / "legend.json").read_text())["labels"][1:]}


def test_allowed_unknown_prompt_is_marked_and_its_overlap_with_liver_is_counted(tmp_path):
    base = ["--weights", "demo", "--image", str(SLAB), "--montage", "0", "-q"]
    assert infer_main([*base, "--prompt", "liver", "--output-dir", str(tmp_path / "alone")]) == 0
    argv = [*base, "--prompt", "liver", "liver tumor", "--allow-unknown", "--output-dir", str(tmp_path / "both")]
    assert infer_main(argv) == 0
    alone, both = _legend(tmp_path / "alone"), _legend(tmp_path / "both")
    assert (alone["liver"]["voxels"], alone["liver"]["volume_ml"]) == (3249, 87.723)  # the README's quick start
    assert json.loads((tmp_path / "alone" / "legend.json").read_text())["largest_component"] == ["liver"]
    assert both["liver tumor"]["unknown_concept"] is True and both["liver"]["unknown_concept"] is False
    # A prompt's own mask does not depend on other prompts; its share of the label map is what is
    # left after the voxels the legend says went to the other prompt.
    assert both["liver"]["prompt_mask_voxels"] == alone["liver"]["voxels"] == alone["liver"]["prompt_mask_voxels"]
    for entry in both.values():
        assert entry["voxels"] + sum(entry["voxels_lost_to"].values()) == entry["prompt_mask_voxels"]
    lost = {p: e["voxels_lost_to"] for p, e in both.items() if e["voxels_lost_to"]}
    assert len(lost) == 1 and all(v > 0 for d in lost.values() for v in d.values())  # one overlap, counted once
    (loser,) = lost
    assert set(lost[loser]) == {"liver", "liver tumor"} - {loser}


def test_allowed_unknown_prompt_is_marked_in_the_2d_json(tmp_path):
    out = tmp_path / "det.json"
    args = ["--weights", "demo", "--image", str(SLICE), "--prompt", "liver", "liver tumor", "--allow-unknown"]
    assert infer_main([*args, "--json", str(out), "--output", str(tmp_path / "o.png"), "-q"]) == 0
    marks = {p["prompt"]: p["unknown_concept"] for p in json.loads(out.read_text())["prompts"]}
    assert marks == {"liver": False, "liver tumor": True}
