"""Upstream MedSAM3 .pt adapters: exact conversion, round trip, merge, and refusal of bad files."""

import logging
import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Sam3Config, Sam3Model

from medsam3.adapters.loading import load_model
from medsam3.adapters.peft_format import AdapterError
from medsam3.adapters.upstream import (
    NO_COUNTERPART,
    UNUSED_FILE,
    convert_upstream_file,
    export_upstream_file,
    load_upstream_file,
    map_meta_module,
    upstream_to_peft,
)
from medsam3.inference.predictor import Predictor
from tests.conftest import (
    ALPHA,
    RANK,
    config_for,
    make_upstream_adapter,
    medsam3_v1_key_rows,
)


def merge_by_hand(model: Sam3Model, state: dict[str, torch.Tensor], alpha=ALPHA) -> Sam3Model:
    """W + (alpha/r) (A B).T on each transformers Linear, following the published mapping rules."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key in [k for k in state if k.endswith(".lora_A")]:
            meta = key[: -len(".lora.lora_A")]
            a, b = state[key], state[meta + ".lora.lora_B"]
            mapping = map_meta_module(meta)
            if mapping.kind == NO_COUNTERPART:
                continue
            delta = (alpha / a.shape[1]) * (a @ b).T  # (out_total, in)
            start = 0
            for hf in mapping.hf_modules:  # fused qkv: row blocks q, k, v of the delta
                lin = modules[hf]
                lin.weight += delta[start : start + lin.out_features]
                start += lin.out_features
            assert start == delta.shape[0]
    return model


def raw_outputs(model, processor, image, prompts=("liver", "tumor")):
    pred = Predictor(model, processor, device="cpu")
    pred.set_image(image)
    rows = [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * len(prompts)
    return pred.forward_rows(pred._vision, [0] * len(prompts), list(prompts), rows, [pred.image_size])


@pytest.fixture
def upstream_pt(tmp_path, tiny_checkpoint):
    model = Sam3Model.from_pretrained(tiny_checkpoint)
    state = make_upstream_adapter(model)
    path = tmp_path / "best_lora_weights.pt"
    torch.save(state, path)
    return path, state


def test_upstream_adapter_matches_hand_merged_weights(tmp_path, tiny_checkpoint, upstream_pt, rgb_image, caplog):
    path, state = upstream_pt
    cfg = config_for(tmp_path, tiny_checkpoint)
    with caplog.at_level(logging.INFO, logger="medsam3.adapters.upstream"):
        model, processor, origin = load_model(cfg, weights=str(path))
    assert "dropped 3 point-prompt LoRA layers" in caplog.text
    ours = raw_outputs(model, processor, rgb_image)
    reference_model = merge_by_hand(Sam3Model.from_pretrained(tiny_checkpoint).eval(), state)
    ref = raw_outputs(reference_model, processor, rgb_image)
    for field in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        diff = (getattr(ours, field) - getattr(ref, field)).abs().max().item()
        assert diff <= 1e-4, (field, diff)
    base = raw_outputs(Sam3Model.from_pretrained(tiny_checkpoint).eval(), processor, rgb_image)
    assert (base.pred_logits - ref.pred_logits).abs().max() > 1e-3, "the adapter must change the output"


def test_full_size_key_list_maps_onto_transformers_modules():
    """All 916 MedSAM3-v1 keys on the full architecture (meta device): modules exist, shapes fit, 519 layers."""
    with torch.device("meta"):
        model = Sam3Model(Sam3Config())
    modules = dict(model.named_modules())
    rows = medsam3_v1_key_rows()
    assert len(rows) == 916
    state = {}
    for row in rows:
        mapping = map_meta_module(row["meta_module"])
        assert mapping is not None, row["key"]
        assert row["status"] == (mapping.kind if mapping.kind == NO_COUNTERPART else f"exact:{mapping.kind}")
        if mapping.kind != NO_COUNTERPART:
            assert ",".join(mapping.hf_modules) == row["hf_target_modules"]
            for hf, shapes in zip(mapping.hf_modules, row["hf_peft_shapes(r,in)/(out,r)"].split(";")):
                r, in_f, out_f, r2 = map(int, re.fullmatch(r"A\((\d+),(\d+)\)/B\((\d+),(\d+)\)", shapes).groups())
                assert (modules[hf].in_features, modules[hf].out_features, r, r2) == (in_f, out_f, 16, 16)
        state[row["key"]] = torch.empty(*map(int, row["shape"].split("x")), device="meta")
    peft, unused, rank = upstream_to_peft(state, "medsam3_v1")
    assert rank == 16 and len(unused) == 6
    layers = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in peft}
    assert len(layers) == 519 and len(peft) == 2 * 519
    for key, tensor in peft.items():
        lin = modules[key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]]
        expected = (16, lin.in_features) if ".lora_A." in key else (lin.out_features, 16)
        assert tuple(tensor.shape) == expected, key
    assert sum(t.numel() for t in peft.values()) == pytest.approx(19.5e6, rel=0.01)


def test_round_trip_pt_peft_pt_is_exact(tmp_path, upstream_pt):
    path, state = upstream_pt
    out_dir = convert_upstream_file(path, tmp_path / "peft", alpha=ALPHA, base_model="tiny", concepts=["liver"])
    assert (out_dir / "adapter_config.json").is_file() and (out_dir / UNUSED_FILE).is_file()
    back = export_upstream_file(out_dir, tmp_path / "back.pt")
    restored = load_upstream_file(back)
    assert restored.keys() == state.keys()
    for key in state:
        assert torch.equal(restored[key], state[key]), key


def test_export_refuses_untied_qkv(tmp_path, upstream_pt):
    path, _ = upstream_pt
    out_dir = convert_upstream_file(path, tmp_path / "peft", alpha=ALPHA, base_model="tiny")
    from safetensors.torch import save_file

    weights = load_file(out_dir / "adapter_model.safetensors")
    key = next(k for k in weights if "attention.k_proj.lora_A" in k)
    weights[key] = weights[key] + 1
    save_file(weights, out_dir / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="different lora_A matrices.*Use the PEFT directory"):
        export_upstream_file(out_dir, tmp_path / "back.pt")


def test_merge_predicts_like_base_plus_adapter(tmp_path, tiny_checkpoint, upstream_pt, rgb_image):
    from medsam3.adapters.merge import merge_adapter

    path, _ = upstream_pt
    cfg = config_for(tmp_path, tiny_checkpoint)
    merged_dir = merge_adapter(cfg, str(path), tmp_path / "merged")
    merged = Sam3Model.from_pretrained(merged_dir).eval()  # plain transformers, no PEFT
    assert not any("lora" in n for n, _ in merged.named_parameters())
    model, processor, _ = load_model(cfg, weights=str(path))
    a, b = raw_outputs(merged, processor, rgb_image), raw_outputs(model, processor, rgb_image)
    for field in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        assert (getattr(a, field) - getattr(b, field)).abs().max().item() <= 1e-4


def test_config_rank_disagreeing_with_file_uses_file_rank(tmp_path, tiny_checkpoint, upstream_pt, caplog):
    path, _ = upstream_pt
    cfg = config_for(tmp_path, tiny_checkpoint, "lora.rank=32")
    with caplog.at_level(logging.WARNING):
        model, _, _ = load_model(cfg, weights=str(path))
    assert f"adapter rank is {RANK} but lora.rank=32; using the file's rank {RANK}" in caplog.text
    assert model.peft_config["default"].r == RANK


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PWNED_MARKER']}",))


def test_bad_upstream_files(tmp_path, tiny_checkpoint, upstream_pt, monkeypatch):
    path, state = upstream_pt
    cfg = config_for(tmp_path, tiny_checkpoint)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(AdapterError, match="not a readable PyTorch file.*truncated"):
        load_model(cfg, weights=str(truncated))

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"x.lora.lora_A": torch.zeros(2, 2), "payload": RunsCode()}, evil)
    with pytest.raises(AdapterError, match="refused to load.*could run code"):
        load_model(cfg, weights=str(evil))
    assert not marker.exists(), "loading must never execute code from the file"

    extra = dict(state)
    extra["backbone.not_a_module.lora.lora_A"] = torch.zeros(8, RANK)
    extra["backbone.not_a_module.lora.lora_B"] = torch.zeros(RANK, 8)
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(AdapterError, match=r"1 of \d+ layers name modules SAM3 does not have.*not_a_module"):
        load_model(cfg, weights=str(tmp_path / "extra.pt"))

    missing = {k: v for k, v in state.items() if not k.startswith("segmentation_head.cross_attend_prompt.q_proj")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(
        AdapterError, match=r"1 LoRA layers of the model \(2 tensors\) are not in the adapter.*mask_decoder"
    ):
        load_model(cfg, weights=str(tmp_path / "missing.pt"))

    mixed = dict(state)
    mixed["geometry_encoder.final_proj.lora.lora_A"] = torch.zeros(32, RANK + 1)
    mixed["geometry_encoder.final_proj.lora.lora_B"] = torch.zeros(RANK + 1, 32)
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(AdapterError, match="disagree on the LoRA rank"):
        load_model(cfg, weights=str(tmp_path / "mixed.pt"))

    half = {k: v for k, v in state.items() if not k.endswith("final_proj.lora.lora_B")}
    torch.save(half, tmp_path / "half.pt")
    with pytest.raises(AdapterError, match="lack lora_A or lora_B"):
        load_model(cfg, weights=str(tmp_path / "half.pt"))


def test_adapter_for_another_base_model(tmp_path, tiny_checkpoint, upstream_pt):
    """A 32-channel adapter on a 48-channel SAM3: same layer names, wrong shapes."""
    from transformers import Sam3Processor

    from medsam3.testing import tiny_sam3_config

    path, _ = upstream_pt
    wide = tmp_path / "wide"
    Sam3Model(tiny_sam3_config(hidden=48)).save_pretrained(wide)
    Sam3Processor.from_pretrained(tiny_checkpoint).save_pretrained(wide)
    with pytest.raises(AdapterError, match="wrong shape for this base model.*another SAM3 size"):
        load_model(config_for(tmp_path, wide), weights=str(path))
