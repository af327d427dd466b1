"""LoRA injection: the wrapped-layer count that training logs, and no dependency warnings."""

from __future__ import annotations

import logging
import re
import warnings

from peft.tuners.lora import LoraLayer

from medsam3.config import LoraConfigSection, ModelConfig
from medsam3.model import add_lora, count_lora_layers, load_base_model, select_lora_targets


def test_add_lora_logs_the_layers_it_wrapped_not_peft_target_entries(tiny_checkpoint, caplog):
    model, _ = load_base_model(ModelConfig(name=str(tiny_checkpoint)))
    lora = LoraConfigSection()
    selected = select_lora_targets(model.named_modules(), lora)
    with caplog.at_level(logging.INFO, logger="medsam3"):
        peft_model = add_lora(model, lora)
    logged = [int(n) for n in re.findall(r"LoRA on (\d+) layers", caplog.text)]
    wrapped = sum(isinstance(m, LoraLayer) for m in peft_model.modules())
    assert logged == [wrapped] == [len(selected)] == [count_lora_layers(peft_model)]
    # PEFT stores long target lists compressed to name suffixes: counting those said 12, not 75.
    assert len(peft_model.peft_config["default"].target_modules) < wrapped


def test_add_lora_raises_no_dependency_warnings(tiny_checkpoint):
    """PEFT reads transformers' deprecated `is_gradient_checkpointing`; that FutureWarning is filtered there."""
    model, _ = load_base_model(ModelConfig(name=str(tiny_checkpoint)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        add_lora(model, LoraConfigSection())


def test_load_error_from_an_empty_cache_is_one_line_without_a_doubled_period(tmp_path):
    """The fallback error (when load_model's hub check was bypassed): no '..', no 'set HF_HUB_OFFLINE=0'."""
    import pytest

    from medsam3.model import ModelLoadError

    with pytest.raises(ModelLoadError) as err:  # tests run with HF_HUB_OFFLINE=1: the empty cache is all there is
        load_base_model(ModelConfig(name="nobody/no-such-sam3", cache_dir=str(tmp_path / "cache")))
    msg = str(err.value)
    assert "\n" not in msg and ".." not in msg and "HF_HUB_OFFLINE=0" not in msg
    assert "medsam3-download --set model.name=nobody/no-such-sam3" in msg
