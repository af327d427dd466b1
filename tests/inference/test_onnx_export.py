"""The vision graph, export -> load -> parity, in seconds (the default suite's ONNX check).

The vision encoder is what ``--precision int8`` quantises and where the time goes. The whole
round trip through the commands (``medsam3-export --onnx``, then ``infer_sam.py`` / the app with
``--backend onnxruntime``, three graphs) takes ~45 s for the export alone and lives in
``test_onnx_backend.py`` (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402

from medsam3.inference.onnx_export import INT8_SCOPES, export_vision_graph, quantize_graph  # noqa: E402
from medsam3.testing import TINY_RESOLUTION, random_sam3  # noqa: E402
from tests.conftest import random_peft_lora  # noqa: E402


@pytest.mark.slow  # ~15 s: three ONNX exports and an int8 quantisation (the default run stays near 5 minutes)
def test_vision_graph_matches_pytorch_with_the_adapter_merged_and_int8_stays_close(tmp_path):
    model, _ = random_sam3("tiny")
    peft = random_peft_lora(model)
    pixels = torch.randn(3, 3, TINY_RESOLUTION, TINY_RESOLUTION, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in peft.get_vision_features(pixel_values=pixels).fpn_hidden_states[:3]]

    path = export_vision_graph(peft, TINY_RESOLUTION, tmp_path / "vision.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["fpn0", "fpn1", "fpn2"]
    got = session.run(None, {"pixel_values": pixels.numpy()})  # 3 images: the batch axis is dynamic
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=1e-4 * np.abs(e).max())

    # int8: every scope quantises some layers, the graph runs, and its features stay near fp32's.
    for scope in INT8_SCOPES:
        int8_path = tmp_path / f"vision.int8.{scope}.onnx"
        assert quantize_graph(path, int8_path, scope) > 0
        int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
        for g, e in zip(int8.run(None, {"pixel_values": pixels.numpy()}), expected, strict=True):
            assert g.shape == e.shape and np.isfinite(g).all()
            assert np.corrcoef(g.ravel(), e.ravel())[0, 1] > 0.99, scope
    with pytest.raises(ValueError, match="int8 scope"):
        quantize_graph(path, tmp_path / "x.onnx", "attention")
