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
from PIL import Image

import medsam3
from medsam3.adapters.concepts import prompt_warnings
from medsam3.cli.infer import main
from medsam3.evaluation.metrics import dice
from tests.conftest import single_torch_thread

DEMO = Path(medsam3.__file__).parent / "demo"
EXAMPLES = DEMO / "examples"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _label_values() -> dict[str, int]:
    names = json.loads((EXAMPLES / "labels.json").read_text())["labels"]
    return {name: i for i, name in enumerate(names, start=1)}


SLAB_PROMPTS = ["liver", "aorta", "spleen", "left kidney", "right kidney"]


@pytest.fixture(scope="module")
def slab_dice(tmp_path_factory) -> dict[str, float]:
    """3D Dice per organ of one CLI run on the held-out CT slab (all five prompts at once)."""
    out = tmp_path_factory.mktemp("demo_slab") / "seg"
    argv = ["--weights", "demo", "--image", str(EXAMPLES / "ct_abdomen_slab.nii.gz"), "--prompt", *SLAB_PROMPTS]
    with single_torch_thread():
        assert main([*argv, "--output-dir", str(out), "--binary-masks", "--montage", "0", "-q"]) == 0
    truth = np.asanyarray(nib.load(EXAMPLES / "ct_abdomen_slab_labels.nii.gz").dataobj)
    values = _label_values()
    scores = {}
    for i, prompt in enumerate(SLAB_PROMPTS):
        pred = np.asanyarray(nib.load(out / "masks" / f"{i:02d}_{prompt.replace(' ', '_')}.nii.gz").dataobj) > 0
        scores[prompt] = dice(pred, truth == values[prompt])
    print("held-out CT slab, 3D Dice:", {k: round(v, 3) for k, v in scores.items()})
    return scores


def test_demo_model_segments_the_liver_and_aorta_on_the_held_out_ct_slab(slab_dice):
    # Measured when shipped: liver 0.830, aorta 0.828 (CPU, threshold 0.25 recorded by the model).
    assert slab_dice["liver"] >= 0.8 and slab_dice["aorta"] >= 0.8


def test_demo_model_keeps_the_model_cards_dice_on_the_other_slab_organs(slab_dice):
    """Below the 0.8 bar, but MODEL.md reports them (CLI, NIfTI, threshold 0.25): they must not drop."""
    model_card = {"spleen": 0.728, "left kidney": 0.611, "right kidney": 0.719}
    for organ, reported in model_card.items():
        assert slab_dice[organ] >= reported - 0.03, f"{organ}: Dice {slab_dice[organ]:.3f}, MODEL.md says {reported}"


def test_demo_model_on_held_out_dicom_slice(tmp_path):
    """The DICOM slice goes through the CLI to an overlay and masks on its pixel grid.

    No Dice bar: MODEL.md ("Limits") reports that the demo model finds nothing on this held-out
    series (another scanner, 500 mm field of view); the card, not a test, records that number.
    """
    masks = tmp_path / "masks"
    argv = ["--weights", "demo", "--image", str(EXAMPLES / "ct_dicom_slice.dcm"), "--prompt", "liver", "spleen"]
    assert main([*argv, "--output", str(tmp_path / "overlay.png"), "--masks-dir", str(masks), "-q"]) == 0
    truth = np.asarray(Image.open(EXAMPLES / "ct_dicom_slice_labels.png"))
    assert Image.open(tmp_path / "overlay.png").format == "PNG"
    for name in ("00_liver.png", "01_spleen.png"):
        assert np.asarray(Image.open(masks / name)).shape == truth.shape
    score = dice(np.asarray(Image.open(masks / "00_liver.png")) > 0, truth == _label_values()["liver"])
    print(f"held-out DICOM slice, liver Dice {score:.3f}")


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
