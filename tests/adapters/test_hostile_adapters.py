"""Adapter files the fuzzer broke the readers with: each is an AdapterError (a UserError) naming the file."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from medsam3.adapters import AdapterError, read_adapter


def _upstream_pt(path, pickle_bytes: bytes) -> None:
    """A torch.save zip whose data.pkl is replaced (the tensors' storages stay)."""
    buf = io.BytesIO()
    torch.save({"x.lora.lora_A": torch.zeros(4, 2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = pickle_bytes if info.filename.endswith("data.pkl") else src.read(info)
            dst.writestr(info, data)


@pytest.mark.parametrize(
    "stream", [b"\x80\x020.", b"\x80\x02]h\x00.", b""], ids=["pop_empty_stack", "bad_memo_get", "empty"]
)
def test_corrupt_pickle_stream_is_an_adapter_error(tmp_path, stream):
    """The weights-only unpickler raised IndexError ('pop from empty list'), and the handler itself
    IndexError-ed on an empty message (str(exc).splitlines()[0])."""
    path = tmp_path / "best_lora_weights.pt"
    _upstream_pt(path, stream)
    with pytest.raises(AdapterError) as info:
        read_adapter(path)
    assert str(path) in str(info.value)


def _peft_dir(tmp_path, config: bytes):
    mod = "base_model.model.vision_encoder.backbone.layers.0.attention.o_proj"
    save_file({f"{mod}.lora_A.weight": torch.zeros(2, 8), f"{mod}.lora_B.weight": torch.zeros(8, 2)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    (tmp_path / "adapter_config.json").write_bytes(config)
    return tmp_path


@pytest.mark.parametrize(
    "config, message",
    [(b'{"r": 2, "lora_alpha": \xff}', "not valid JSON"), (json.dumps([1, 2]).encode(), "expected a JSON object")],
    ids=["not_utf8", "a_list"],
)
def test_broken_peft_config_is_an_adapter_error(tmp_path, config, message):
    with pytest.raises(AdapterError, match=message):
        read_adapter(_peft_dir(tmp_path, config))
