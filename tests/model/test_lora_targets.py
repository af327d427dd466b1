"""The LoRA layer set on the full-size architecture (built on the meta device: no memory)."""

import re

import pytest
import torch
from transformers import Sam3Config, Sam3Model

from medsam3.config import load_config
from medsam3.model.lora_targets import COMPONENTS, select_lora_targets
from tests.conftest import FULL_CONFIG, LORA_KEYS_TSV, LORA_KEYS_VENDORED, medsam3_v1_key_rows


@pytest.fixture(scope="module")
def full_model():
    with torch.device("meta"):
        return Sam3Model(Sam3Config())


def medsam3_v1_targets() -> set[str]:
    rows = medsam3_v1_key_rows()
    assert len(rows) == 916
    return {m for r in rows if r["status"] != "NO_HF_COUNTERPART" for m in r["hf_target_modules"].split(",")}


def test_full_config_wraps_exactly_medsam3_v1_layers(full_model):
    selected = select_lora_targets(full_model.named_modules(), load_config(FULL_CONFIG).lora)
    expected = medsam3_v1_targets()
    assert len(expected) == 519
    assert len(selected) == len(set(selected))
    assert set(selected) == expected


COMPONENT_PREFIX = {
    "vision_encoder": r"vision_encoder\.",
    "text_encoder": r"text_encoder\.",
    "geometry_encoder": r"geometry_encoder\.",
    "detr_encoder": r"detr_encoder\.",
    "detr_decoder": r"(detr_decoder|dot_product_scoring)\.",
    "mask_decoder": r"mask_decoder\.",
}


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_flag_excludes_what_it_names(full_model, component):
    cfg = load_config(FULL_CONFIG, [f"lora.apply_to_{component}=false"])
    selected = set(select_lora_targets(full_model.named_modules(), cfg.lora))
    everything = medsam3_v1_targets()
    removed = everything - selected
    assert removed, f"apply_to_{component}: false excluded nothing"
    assert selected < everything
    assert all(re.match(COMPONENT_PREFIX[component], name) for name in removed)
    assert not any(re.match(COMPONENT_PREFIX[component], name) for name in selected)


def test_target_names_follow_upstream_contains_rule(full_model):
    cfg = load_config(FULL_CONFIG, ["lora.target_modules=[qkv]"])
    selected = select_lora_targets(full_model.named_modules(), cfg.lora)
    assert len(selected) == 32 * 3  # the ViT's fused qkv became q/k/v in each of 32 blocks
    assert all(re.fullmatch(r"vision_encoder\.backbone\.layers\.\d+\.attention\.[qkv]_proj", n) for n in selected)
    cfg = load_config(FULL_CONFIG, ["lora.target_modules=[c_fc, linear2]"])
    selected = select_lora_targets(full_model.named_modules(), cfg.lora)
    # c_fc: CLIP's first MLP layer (24); linear2: second MLP layer of geometry (3), DETR enc (6) and dec (6).
    assert len(selected) == 24 + 3 + 6 + 6
    assert sum(n.startswith("text_encoder") and n.endswith("mlp.fc1") for n in selected) == 24


def test_vendored_key_table_matches_shared():
    """The copy under tests/fixtures must not drift from shared/medsam3_v1/lora_keys.tsv."""
    import gzip

    if not LORA_KEYS_TSV.is_file():
        pytest.skip(
            "maintainers' drift check only, nothing to do: the source table ../shared/medsam3_v1/lora_keys.tsv "
            "lives outside the repository; the other tests use the copy in tests/fixtures/"
        )
    assert gzip.decompress(LORA_KEYS_VENDORED.read_bytes()).decode() == LORA_KEYS_TSV.read_text()
