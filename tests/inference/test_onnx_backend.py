"""ONNX export + ONNX Runtime backend on the tiny model, through the commands a user runs.

One export (tiny SAM3 + a random PEFT LoRA adapter, merged; fp32 and int8) is shared by the module:
``medsam3-export --onnx``, then ``infer_sam.py`` with ``--backend torch`` and ``--backend
onnxruntime`` on the same inputs, detections compared (scores within 1e-4, mask IoU >= 0.999), and
the app served from the folder. The default suite's check is ``test_onnx_export.py`` (vision graph).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One shared export of the tiny model takes ~45-60 s on 2 idle cores: over the default suite's budget.
pytestmark = pytest.mark.slow

from medsam3.cli.export import main as export_main  # noqa: E402
from medsam3.cli.infer import main as infer_main  # noqa: E402
from tests.conftest import random_peft_lora  # noqa: E402

RANK = 4


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_checkpoint):
    """A PEFT LoRA adapter with non-zero B (PEFT initialises B to zero: merging it would change nothing)."""
    from transformers import Sam3Model

    peft = random_peft_lora(Sam3Model.from_pretrained(tiny_checkpoint), rank=RANK)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sets(tiny_checkpoint):
    return ["--set", f"model.name={tiny_checkpoint}", "--set", "hardware.device=cpu", "--set", f"lora.rank={RANK}"]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, adapter_dir, sets):
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert export_main(["--weights", str(adapter_dir), *sets, "--onnx", str(out), "--int8", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, rgb_image):
    path = tmp_path_factory.mktemp("img") / "scan.png"
    Image.fromarray(rgb_image).save(path)
    return path


PROMPTS = ["liver", "tumor", "kidney"]


def _infer_json(tmp_path, name, image_path, adapter_dir, sets, *extra) -> list[dict]:
    out = tmp_path / f"{name}.json"
    argv = ["--image", str(image_path), "--prompt", *PROMPTS, "--weights", str(adapter_dir), *sets]
    argv += ["--threshold", "0", "--json", str(out), "--output", str(tmp_path / f"{name}.png"), "-q", *extra]
    assert infer_main(argv) == 0
    return json.loads(out.read_text())["prompts"]


def _assert_same_detections(ref, other, score_tol=1e-4, min_iou=0.999):
    for a, b in zip(ref, other, strict=True):
        assert a["prompt"] == b["prompt"]
        assert a["num_detections"] == b["num_detections"] > 0
        for da, db in zip(a["detections"], b["detections"]):
            assert abs(da["score"] - db["score"]) <= score_tol
            np.testing.assert_allclose(da["box_xyxy"], db["box_xyxy"], atol=0.05)
            ra, rb = ({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()} for d in (da, db))
            if mask_utils.area([ra, rb]).sum():
                assert mask_utils.iou([ra], [rb], [0])[0, 0] >= min_iou


def test_export_writes_graphs_and_manifest(onnx_dir, adapter_dir):
    manifest = json.loads((onnx_dir / "medsam3_onnx.json").read_text())
    assert manifest["resolution"] == 112 and manifest["opset"] == 18
    assert manifest["identity"]["adapter"]["rank"] == RANK and str(adapter_dir) in manifest["adapter"]
    for file in [*manifest["graphs"].values(), *manifest["int8_graphs"].values()]:
        assert (onnx_dir / file).is_file()
    import onnx

    nodes = onnx.load(onnx_dir / "vision.int8.onnx", load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    assert "DynamicQuantizeLinear" in ops
    # the default scope: the ViT's MLPs (fc1, fc2 of each of the tiny model's 2 layers), not its attention
    assert ops.count("MatMulInteger") == 4
    fp32 = onnx.load(onnx_dir / "vision.onnx", load_external_data=False).graph
    constant = {i.name for i in fp32.initializer}
    linear = [n for n in fp32.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constant]
    assert len(linear) > 4


@pytest.mark.parametrize("box", [False, True], ids=["text", "text+boxes"])
def test_onnxruntime_matches_torch_through_the_cli(tmp_path, onnx_dir, image_path, adapter_dir, sets, box):
    extra = ["--box", "10", "15", "60", "70", "--neg-box", "80", "50", "120", "80"] if box else []
    ref = _infer_json(tmp_path, "torch", image_path, adapter_dir, sets, "--precision", "fp32", *extra)
    ort = _infer_json(
        tmp_path, "ort", image_path, adapter_dir, sets, "--backend", "onnxruntime", "--onnx-dir", str(onnx_dir), *extra
    )
    _assert_same_detections(ref, ort)
    # int8 runs the same pipeline; on random weights only "it answers every prompt" is meaningful
    q = _infer_json(
        tmp_path,
        "int8",
        image_path,
        adapter_dir,
        sets,
        "--backend",
        "onnxruntime",
        "--onnx-dir",
        str(onnx_dir),
        "--precision",
        "int8",
        *extra,
    )
    assert [p["prompt"] for p in q] == PROMPTS and all(p["num_detections"] > 0 for p in q)


def test_volume_through_onnxruntime_matches_torch(tmp_path, onnx_dir, adapter_dir, sets, rgb_image):
    vol = np.stack([rgb_image[..., 0].astype(np.int16) * (1 + i) for i in range(3)], axis=-1)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    labels = {}
    for backend, extra in {"torch": [], "onnxruntime": ["--onnx-dir", str(onnx_dir)]}.items():
        out = tmp_path / backend
        argv = [
            "--image",
            str(path),
            "--prompt",
            *PROMPTS,
            "--weights",
            str(adapter_dir),
            *sets,
            "--threshold",
            "0.3",
            "--slice-batch",
            "2",
            "--montage",
            "0",
            "--output-dir",
            str(out),
            "-q",
            "--backend",
            backend,
        ]
        assert infer_main(argv + extra) == 0
        labels[backend] = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    assert labels["torch"].any()
    assert (labels["torch"] != labels["onnxruntime"]).mean() < 1e-3


def test_stale_or_wrong_folder_is_refused(onnx_dir, image_path, adapter_dir, sets, capsys):
    base = ["--image", str(image_path), "--prompt", "liver", *sets, "--backend", "onnxruntime", "-q"]
    cases = {
        "other adapter": (["--weights", "none", "--onnx-dir", str(onnx_dir)], "exported from other weights"),
        "other input size": (
            ["--weights", str(adapter_dir), "--onnx-dir", str(onnx_dir), "--set", "model.resolution=56"],
            "resolution",
        ),
        "not an export": (["--weights", str(adapter_dir), "--onnx-dir", str(image_path.parent)], "not a medsam3 ONNX"),
        "no folder": (["--weights", str(adapter_dir)], "needs --onnx-dir"),
    }
    for name, (extra, message) in cases.items():
        capsys.readouterr()
        assert infer_main(base + extra) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)


def test_export_and_flag_refusals(tmp_path, onnx_dir, image_path, adapter_dir, sets, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases = [
        (export_main, ["--weights", str(adapter_dir), *sets, "--onnx", str(tmp_path / "busy")], "not empty"),
        (export_main, ["--weights", str(adapter_dir), *sets, "--onnx", str(onnx_dir)], "--overwrite"),
        (
            export_main,
            ["--weights", str(tmp_path / "nope.pt"), *sets, "--onnx", str(tmp_path / "o")],
            "no such file or folder",
        ),
        (
            export_main,
            ["--weights", "none", "--set", f"model.name={tmp_path}", "--onnx", str(tmp_path / "o2")],
            "error",
        ),
        (infer_main, ["--image", str(image_path), "--prompt", "liver", "--precision", "int8", *sets], "onnxruntime"),
    ]
    for main, argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_app_serves_from_an_onnx_folder_as_infer_sam_does(
    tmp_path, onnx_dir, image_path, adapter_dir, sets, monkeypatch
):
    """medsam3-app --backend onnxruntime: the page's service answers with the ORT graphs, as infer_sam.py does."""
    gr = pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    from medsam3.app import main as app_main
    from medsam3.app import service as service_module

    services = []

    class Recording(service_module.AppService):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            services.append(self)

        def close(self):  # the test drives it after launch returns
            pass

    monkeypatch.setattr(service_module, "AppService", Recording)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    argv = ["--weights", str(adapter_dir), *sets, "--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)]
    argv += ["--port", "0"]
    assert app_main.main([*argv, "--work-dir", str(tmp_path / "work"), "-q"]) == 0
    (service,) = services
    assert "ONNX Runtime fp32" in service.predictor.adapter_origin
    upload = service.open(image_path)
    result = service.segment_image(upload, PROMPTS, [], 0.0, 0.5)
    ort = _infer_json(
        tmp_path, "ort", image_path, adapter_dir, sets, "--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)
    )
    for detections, expected in zip(result.results, ort, strict=True):
        assert detections.prompt == expected["prompt"]
        np.testing.assert_allclose(detections.scores, [d["score"] for d in expected["detections"]], atol=1e-6)

    assert app_main.main(["--weights", str(adapter_dir), *sets, "--precision", "int8"]) == 2  # int8 is ORT's
