"""``medsam3-app``'s command line: infer_sam.py's model options, local-only by default, one-line errors."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")

import gradio as gr  # noqa: E402

from medsam3.app.main import main  # noqa: E402


def test_binds_localhost_without_a_share_link_and_loads_the_model_once(tiny_config, monkeypatch, tmp_path):
    launched = {}

    def fake_launch(self, **kwargs):
        launched.update(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    code = main(["--config", str(tiny_config), "--weights", "none", "--set", "hardware.device=cpu"])
    assert code == 0
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False and launched["server_port"] == 7860

    launched.clear()
    code = main(["--config", str(tiny_config), "--weights", "none", "--host", "0.0.0.0", "--share", "--port", "0"])
    assert code == 0 and launched["server_name"] == "0.0.0.0" and launched["share"] is True


def test_mistakes_are_one_error_line_and_exit_2(tiny_config, tmp_path, capsys, monkeypatch):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsam3-app: error: ") and "missing.yaml" in err and err.count("\n") == 1

    assert main(["--config", str(tiny_config), "--set", "lora.rnak=4"]) == 2
    assert "did you mean 'lora.rank'" in capsys.readouterr().err

    assert main(["--config", str(tiny_config), "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err

    # the backend flags are infer_sam.py's, refused the same way before anything loads
    assert main(["--config", str(tiny_config), "--precision", "int8"]) == 2
    assert "add --backend onnxruntime" in capsys.readouterr().err
    assert main(["--config", str(tiny_config), "--backend", "onnxruntime"]) == 2
    assert "needs --onnx-dir DIR" in capsys.readouterr().err
    assert (
        main(
            ["--config", str(tiny_config), "--weights", "none", "--backend", "onnxruntime", "--onnx-dir", str(tmp_path)]
        )
        == 2
    )
    assert "not a medsam3 ONNX" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the app extra were not installed
    assert main(["--config", str(tiny_config)]) == 2
    assert "pip install -e '.[app]'" in capsys.readouterr().err
