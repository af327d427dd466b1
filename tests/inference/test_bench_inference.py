"""scripts/bench_inference.py: its module timing and the --free-pixel-decoder upper bound measure what they say."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medsam3.inference.predictor import Predictor
from medsam3.testing import random_sam3
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_inference.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_inference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_free_pixel_decoder_skips_the_decoder_keeps_scores_and_restores_it():
    bench = _bench_module()
    model, processor = random_sam3("tiny")
    predictor = Predictor(model, processor, device="cpu")
    image = (np.random.RandomState(0).rand(120, 160, 3) * 255).astype(np.uint8)
    predictor.set_image(image)
    real = predictor.predict(["liver", "spleen"], threshold=0.0)

    decoder = model.mask_decoder.pixel_decoder
    calls = []
    hook = decoder.conv_layers[0].register_forward_hook(lambda *_: calls.append(1))  # runs only in the real decoder
    cache: dict = {}
    with bench.pixel_decoder_cached(model, cache):
        first = predictor.predict(["liver", "spleen"], threshold=0.0)
        runs_after_first = len(calls)
        again = predictor.predict(["kidney", "aorta"], threshold=0.0)
    hook.remove()
    # the decoder ran once to fill the cache, then not at all for a batch of the same shape
    assert runs_after_first == 1 and len(calls) == 1 and len(cache) == 1
    # scores come before the mask decoder, so the bound changes no score
    for a, b in zip(real, first):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert len(again) == 2
    # outside the context the real decoder is back
    assert "forward" not in vars(decoder)
    outside = predictor.predict(["liver", "spleen"], threshold=0.0)
    for a, b in zip(real, outside):
        np.testing.assert_array_equal(a.masks, b.masks)


def test_module_seconds_times_each_prompt_module_and_removes_its_hooks():
    bench = _bench_module()
    model, processor = random_sam3("tiny")
    predictor = Predictor(model, processor, device="cpu")
    predictor.set_image((np.random.RandomState(1).rand(112, 112, 3) * 255).astype(np.uint8))
    seconds: dict[str, float] = {}
    with bench.module_seconds(model, seconds):
        predictor.predict(["liver", "spleen", "kidney"], threshold=0.0)
    assert set(seconds) == set(bench.PROMPT_MODULES)
    assert all(v > 0 for v in seconds.values())
    assert seconds["pixel_decoder"] < seconds["mask_decoder"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.slow  # a benchmark script end to end in a subprocess (~12 s): keeps the default suite under 5 minutes
def test_cli_prints_the_bound_and_the_module_split(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--prompts", "3", "--free-pixel-decoder", "--json", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "UPPER BOUND: pixel decoder free, masks invalid" in proc.stdout
    assert "prompts 2..3 by module: DETR encoder" in proc.stdout
    row = json.loads(out.read_text())
    assert row["free_pixel_decoder"] is True and row["max_abs_score_diff"] < 1e-5
    assert set(row["other_prompts_by_module_s"]) == {"detr_encoder", "detr_decoder", "pixel_decoder", "mask_decoder"}
