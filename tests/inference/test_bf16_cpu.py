"""bf16 autocast on CPU through the Predictor and volume inference, against fp32.

CUDA runs bf16 by default; no GPU is here, so these tests run the same autocast code path on CPU
(CPU autocast supports bf16) so that dtype mistakes show up in CI. Tolerance: scores (probabilities
in [0, 1]) within 0.02 of fp32: bf16 keeps 8 significant bits (~2-3 decimal digits), and the error
grows through the layers; the measured difference on the tiny model is far below it.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medsam3.config import ModelConfig
from medsam3.inference.postprocess import detection_scores
from medsam3.inference.predictor import Predictor
from medsam3.model import load_base_model
from tests.conftest import run_cli, write_config
from tests.train.conftest import build_learnable_tiny_checkpoint

SCORE_TOL = 0.02


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """The tiny SAM3 with larger weights, so logits are O(1) and bf16 rounding shows."""
    return build_learnable_tiny_checkpoint(tmp_path_factory.mktemp("bf16_tiny"))


def _predictors(checkpoint):
    model, processor = load_base_model(ModelConfig(name=str(checkpoint)))
    return Predictor(model, processor, device="cpu", precision="fp32"), Predictor(
        model, processor, device="cpu", precision="bf16"
    )


def test_predictor_bf16_on_cpu_matches_fp32(learnable, rgb_image):
    fp32, bf16 = _predictors(learnable)
    assert fp32.autocast_dtype is None and bf16.autocast_dtype is torch.bfloat16
    rows = [
        (0, "liver", (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))),  # text (+ geometry CLS)
        (0, "tumor", (np.array([[20, 15, 70, 60]], np.float32), np.ones(1, np.int64))),  # text + box
    ]
    raw = {}
    for name, p in (("fp32", fp32), ("bf16", bf16)):
        p.set_image(rgb_image)
        out = p.forward_rows(
            p._vision, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [p.image_size]
        )
        raw[name] = (out, detection_scores(out.pred_logits, out.presence_logits))
    assert raw["bf16"][0].pred_logits.dtype == torch.bfloat16  # autocast really ran the model in bf16
    assert raw["fp32"][0].pred_logits.dtype == torch.float32
    logits = raw["fp32"][0].pred_logits
    assert logits.abs().max() > 0.1  # O(1) logits: the comparison below is not trivially met
    diff = (raw["fp32"][1] - raw["bf16"][1]).abs().max().item()
    assert 0 < diff < SCORE_TOL
    # The public path: detections come back as float32 / bool whatever the autocast dtype
    for p in (fp32, bf16):
        det = p.predict(["liver", "tumor"], threshold=0.0, nms_iou=None)
        assert det[0].scores.dtype == np.float32 and det[0].boxes.dtype == np.float32
        assert det[0].masks.dtype == bool and det[0].masks.shape[1:] == rgb_image.shape[:2]
    a = fp32.predict("liver", threshold=0.0, nms_iou=None)[0]
    b = bf16.predict("liver", threshold=0.0, nms_iou=None)[0]
    assert np.abs(np.sort(a.scores) - np.sort(b.scores)).max() < SCORE_TOL


def test_volume_cli_bf16_on_cpu_matches_fp32(tmp_path, learnable):
    config = write_config(tmp_path / "cfg.yaml", learnable, hardware={"device": "cpu"})
    rng = np.random.default_rng(0)
    data = rng.normal(0, 50, (40, 36, 5)).astype(np.float32)
    data[8:30, 6:24, 1:4] += 400
    nib.Nifti1Image(data, np.diag([0.9, 0.9, 2.5, 1.0])).to_filename(tmp_path / "ct.nii.gz")
    legends, labels = {}, {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["--config", config, "--weights", "none", "--image", tmp_path / "ct.nii.gz", "--prompt", "liver"]
        args += ["spleen", "--threshold", "0.0", "--precision", precision, "--output-dir", out, "--montage", "0", "-q"]
        assert run_cli(*args) == 0
        legends[precision] = json.loads((out / "legend.json").read_text())
        labels[precision] = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    for a, b in zip(legends["fp32"]["labels"][1:], legends["bf16"]["labels"][1:]):
        assert a["prompt"] == b["prompt"]
        assert abs(a["max_score"] - b["max_score"]) < SCORE_TOL
    assert labels["bf16"].shape == data.shape
    assert (labels["fp32"] == labels["bf16"]).mean() > 0.95  # voxels flip only where logits are near 0
