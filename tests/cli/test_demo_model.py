"""The shipped demo model segments held-out real CT through the CLI, offline (``--weights demo``).

The examples in ``medsam3/demo/examples`` come from the demo's test split only (see MODEL.md):
the 4-slice NIfTI is the abdominal CT's held-out slab, the DICOM slice is from the held-out CT
series. Labels are TotalSegmentator's, values = 1-based position in ``labels.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import medsam3
from medsam3.adapters.concepts import prompt_warnings
from medsam3.cli.infer import main
from medsam3.evaluation.metrics import dice

DEMO = Path(medsam3.__file__).parent / "demo"
EXAMPLES = DEMO / "examples"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _label_values() -> dict[str, int]:
    names = json.loads((EXAMPLES / "labels.json").read_text())["labels"]
    return {name: i for i, name in enumerate(names, start=1)}


def _slab_dice(tmp_path, prompts):
    out = tmp_path / "seg"
    argv = ["--weights", "demo", "--image", str(EXAMPLES / "ct_abdomen_slab.nii.gz"), "--prompt", *prompts]
    assert main([*argv, "--output-dir", str(out), "--binary-masks", "--montage", "0", "-q"]) == 0
    truth = np.asanyarray(nib.load(EXAMPLES / "ct_abdomen_slab_labels.nii.gz").dataobj)
    values = _label_values()
    scores = {}
    for i, prompt in enumerate(prompts):
        pred = np.asanyarray(nib.load(out / "masks" / f"{i:02d}_{prompt.replace(' ', '_')}.nii.gz").dataobj) > 0
        scores[prompt] = dice(pred, truth == values[prompt])
    print("held-out CT slab, 3D Dice:", {k: round(v, 3) for k, v in scores.items()})
    return scores


def test_demo_model_segments_the_liver_and_aorta_on_the_held_out_ct_slab(tmp_path):
    # Measured when shipped: liver 0.830, aorta 0.828 (CPU, threshold 0.25 recorded by the model).
    scores = _slab_dice(tmp_path, ["liver", "aorta"])
    assert scores["liver"] >= 0.8 and scores["aorta"] >= 0.8


@pytest.mark.xfail(reason="demo model below the bar: spleen 0.73, kidneys 0.61/0.72 on this slab (MODEL.md)")
def test_demo_model_segments_a_second_organ_on_the_held_out_ct_slab(tmp_path):
    scores = _slab_dice(tmp_path, ["spleen", "left kidney", "right kidney"])
    assert max(scores.values()) >= 0.8


@pytest.mark.xfail(reason="the held-out CT series (other scanner, 500 mm field of view) is not recognised (MODEL.md)")
def test_demo_model_on_held_out_dicom_slice(tmp_path):
    masks = tmp_path / "masks"
    argv = ["--weights", "demo", "--image", str(EXAMPLES / "ct_dicom_slice.dcm"), "--prompt", "liver", "spleen"]
    assert main([*argv, "--output", str(tmp_path / "overlay.png"), "--masks-dir", str(masks), "-q"]) == 0
    assert (tmp_path / "overlay.png").is_file()
    truth = np.asarray(Image.open(EXAMPLES / "ct_dicom_slice_labels.png"))
    liver = np.asarray(Image.open(masks / "00_liver.png")) > 0
    assert liver.shape == truth.shape
    score = dice(liver, truth == _label_values()["liver"])
    print(f"held-out DICOM slice, liver Dice {score:.3f}")
    assert score >= 0.8


def test_list_concepts_and_unknown_prompt_warning(tmp_path, capsys, caplog):
    assert main(["--weights", "demo", "--list-concepts"]) == 0
    listed = capsys.readouterr().out
    for concept in ("liver", "left kidney", "brain"):
        assert f"  {concept}\n" in listed
    argv = ["--weights", "demo", "--image", str(EXAMPLES / "ct_dicom_slice.dcm"), "--prompt", "livr"]
    assert main([*argv, "--output", str(tmp_path / "o.png"), "-q"]) == 2  # refused: the model does not know it
    assert "'livr' is not a concept this model was trained on (closest: 'liver'" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):  # allowed: run, with the same warning
        assert main([*argv, "--allow-unknown", "--output", str(tmp_path / "o.png"), "-q"]) == 0
    assert "'livr' is not a concept this model was trained on (closest: 'liver'" in caplog.text


def test_prompt_warnings_rules():
    known = {"m": ["liver", "left kidney", "right kidney"]}
    assert prompt_warnings(["Liver", "left kidney"], known) == []
    (msg,) = prompt_warnings(["kidney left"], known)
    assert "closest:" in msg and "'left kidney'" in msg
    (msg,) = prompt_warnings(["xyzzy"], known)
    assert "known concepts: 'left kidney', 'liver', 'right kidney'" in msg
    assert prompt_warnings(["anything"], {}) == []  # nothing recorded: no warning
