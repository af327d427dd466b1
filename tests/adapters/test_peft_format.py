"""PEFT adapters: saved, found, and loaded strictly."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from medsam3.adapters.loading import load_model
from medsam3.adapters.peft_format import AdapterError, save_adapter
from medsam3.config import load_config
from medsam3.inference.predictor import Predictor
from medsam3.model import add_lora, load_base_model


def randomise_lora(peft_model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture
def trained_adapter(tmp_path, tiny_config):
    """A PEFT adapter dir with non-zero LoRA weights, and the predictions it should give."""
    cfg = load_config(tiny_config)
    model, processor = load_base_model(cfg.model)
    peft_model = add_lora(model, cfg.lora)
    randomise_lora(peft_model)
    out = save_adapter(peft_model.eval(), tmp_path / "adapter")
    return out, Predictor(peft_model, processor, device="cpu")


def predictions(predictor, image):
    predictor.set_image(image)
    return predictor.predict(["liver", "tumor"], threshold=0.0, nms_iou=None)


def test_adapter_round_trip_reproduces_predictions(tiny_config, trained_adapter, rgb_image):
    path, reference = trained_adapter
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    model, processor, origin = load_model(load_config(tiny_config), weights=str(path))
    loaded = Predictor(model, processor, device="cpu")
    for a, b in zip(predictions(loaded, rgb_image), predictions(reference, rgb_image)):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    plain_model, processor, origin = load_model(load_config(tiny_config), weights="none")
    assert origin.startswith("none")
    plain = predictions(Predictor(plain_model, processor, device="cpu"), rgb_image)[0].scores
    adapted = predictions(loaded, rgb_image)[0].scores
    n = min(len(plain), len(adapted))  # queries with empty masks are no detections: the counts may differ
    assert len(plain) != len(adapted) or np.abs(plain[:n] - adapted[:n]).max() > 1e-5


def test_auto_detect_from_output_dir(tiny_config, trained_adapter, rgb_image):
    path, reference = trained_adapter
    cfg = load_config(tiny_config)
    with pytest.raises(AdapterError, match="--weights none"):
        load_model(cfg)
    target = tiny_config.parent / "outputs" / "best_lora_weights"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    model, processor, origin = load_model(cfg)
    assert origin == str(target)


def test_keys_that_do_not_match_are_named_and_counted(tiny_config, trained_adapter):
    path, _ = trained_adapter
    state = load_file(path / "adapter_model.safetensors")
    dropped = sorted(k for k in state if "mask_decoder" in k)
    for k in dropped:
        del state[k]
    state["base_model.model.not_a_layer.lora_A.weight"] = torch.zeros(16, 4)
    save_file(state, path / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as err:
        load_model(load_config(tiny_config), weights=str(path))
    msg = str(err.value)
    assert "1 adapter layers (1 tensors) have no LoRA layer" in msg and "not_a_layer" in msg
    assert f"{len(dropped) // 2} LoRA layers of the model ({len(dropped)} tensors) are not in the adapter" in msg
    assert "mask_decoder.prompt_cross_attn" in msg


def test_flag_mismatch_is_an_error_not_silence(tiny_config, trained_adapter):
    path, _ = trained_adapter
    cfg = load_config(tiny_config, ["lora.apply_to_mask_decoder=false"])
    with pytest.raises(AdapterError, match=r"4 adapter layers \(8 tensors\) have no LoRA layer"):
        load_model(cfg, weights=str(path))


def test_rank_mismatch(tiny_config, trained_adapter):
    path, _ = trained_adapter
    with pytest.raises(AdapterError, match=r"adapter rank is 16 but the config says lora.rank=8.*--set lora.rank=16"):
        load_model(load_config(tiny_config, ["lora.rank=8"]), weights=str(path))


def test_bad_adapter_files(tmp_path, tiny_config, trained_adapter):
    cfg = load_config(tiny_config)
    with pytest.raises(AdapterError, match="no such file or folder"):
        load_model(cfg, weights=str(tmp_path / "missing_dir" / "x.safetensors"))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes((trained_adapter[0] / "adapter_model.safetensors").read_bytes()[:200])
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        load_model(cfg, weights=str(truncated))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        load_model(cfg, weights=str(tmp_path / "empty_dir"))
    weird = tmp_path / "w.bin"
    weird.write_bytes(b"123")
    with pytest.raises(AdapterError, match="unsupported adapter format"):
        load_model(cfg, weights=str(weird))
    conf = json.loads((trained_adapter[0] / "adapter_config.json").read_text())
    conf["r"] = 4
    (trained_adapter[0] / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(AdapterError, match="says r=4 but the tensors have rank 16"):
        load_model(cfg, weights=str(trained_adapter[0]))
