"""Upstream MedSAM3 adapters (``best_lora_weights.pt``, Meta SAM3 names) <-> PEFT LoRA, exactly.

Upstream file: a dict of tensors ``<Meta module>.lora.lora_A`` (in, r) and ``.lora.lora_B``
(r, out), delta(x) = x A B alpha/r. PEFT stores ``lora_A.weight`` = A.T (r, in) and
``lora_B.weight`` = B.T (out, r) with the same alpha/r scaling, so renamed layers copy over.
Two structural differences:

- ``fused_qkv_split``: Meta's ViT has one ``qkv`` Linear; transformers has q/k/v. A is shared
  by the three, B.T splits into three row blocks (q, k, v).
- ``mha_in_proj_row_block``: q/k/v that upstream carved out of a ``nn.MultiheadAttention``
  (its in_proj rows); their LoRA factors copy over as for renamed layers.

The geometry encoder's three point-prompt projections have no transformers counterpart; they
take no part in text or box prompts, so dropping them is exact. They are kept beside a
converted adapter so that export back to ``.pt`` reproduces the file bit for bit.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .peft_format import AdapterError, AdapterWeights

__all__ = [
    "NO_COUNTERPART",
    "UNUSED_FILE",
    "LayerMapping",
    "map_meta_module",
    "meta_module_for",
    "read_upstream_adapter",
    "load_upstream_file",
    "upstream_to_peft",
    "peft_to_upstream",
]

logger = logging.getLogger(__name__)

UNUSED_FILE = "upstream_unused_lora.safetensors"
NO_COUNTERPART = "NO_HF_COUNTERPART"
_PEFT_PREFIX = "base_model.model."
_SHOW = 5


@dataclass(frozen=True)
class _Rule:
    meta: str  # Meta module path, "{i}" for a layer index
    hf: tuple[str, ...]  # transformers module path(s); three for a fused qkv
    kind: str


def _carved(meta_attn: str, hf_attn: str, kind_out: str = "direct") -> list[_Rule]:
    """q/k/v carved from a MultiheadAttention plus its out_proj."""
    rules = [_Rule(f"{meta_attn}.{p}_proj", (f"{hf_attn}.{p}_proj",), "mha_in_proj_row_block") for p in "qkv"]
    return rules + [_Rule(f"{meta_attn}.out_proj", (f"{hf_attn}.o_proj",), kind_out)]


_VIT, _HF_VIT = "backbone.vision_backbone.trunk.blocks.{i}", "vision_encoder.backbone.layers.{i}"
_TXT, _HF_TXT = (
    "backbone.language_backbone.encoder.transformer.resblocks.{i}",
    "text_encoder.text_model.encoder.layers.{i}",
)
_RULES: tuple[_Rule, ...] = (
    _Rule(f"{_VIT}.attn.qkv", tuple(f"{_HF_VIT}.attention.{p}_proj" for p in "qkv"), "fused_qkv_split"),
    _Rule(f"{_VIT}.attn.proj", (f"{_HF_VIT}.attention.o_proj",), "direct"),
    _Rule(f"{_VIT}.mlp.fc1", (f"{_HF_VIT}.mlp.fc1",), "direct"),
    _Rule(f"{_VIT}.mlp.fc2", (f"{_HF_VIT}.mlp.fc2",), "direct"),
    *[_Rule(f"{_TXT}.attn.{p}_proj", (f"{_HF_TXT}.self_attn.{p}_proj",), "mha_in_proj_row_block") for p in "qkv"],
    _Rule(f"{_TXT}.attn.out_proj", (f"{_HF_TXT}.self_attn.out_proj",), "direct"),
    _Rule(f"{_TXT}.mlp.c_fc", (f"{_HF_TXT}.mlp.fc1",), "direct"),
    _Rule(f"{_TXT}.mlp.c_proj", (f"{_HF_TXT}.mlp.fc2",), "direct"),
    _Rule("dot_prod_scoring.prompt_proj", ("dot_product_scoring.text_proj",), "direct"),
    _Rule("dot_prod_scoring.hs_proj", ("dot_product_scoring.query_proj",), "direct"),
    *[
        _Rule(f"geometry_encoder.{n}", (f"geometry_encoder.{n}",), "direct_same_name")
        for n in ("boxes_direct_project", "boxes_pos_enc_project", "final_proj")
    ],
    *_carved("geometry_encoder.encode.{i}.self_attn", "geometry_encoder.layers.{i}.self_attn"),
    *_carved("geometry_encoder.encode.{i}.cross_attn_image", "geometry_encoder.layers.{i}.cross_attn"),
    _Rule("geometry_encoder.encode.{i}.linear1", ("geometry_encoder.layers.{i}.mlp.fc1",), "direct"),
    _Rule("geometry_encoder.encode.{i}.linear2", ("geometry_encoder.layers.{i}.mlp.fc2",), "direct"),
    *_carved("segmentation_head.cross_attend_prompt", "mask_decoder.prompt_cross_attn"),
    *_carved("transformer.encoder.layers.{i}.self_attn", "detr_encoder.layers.{i}.self_attn"),
    *_carved("transformer.encoder.layers.{i}.cross_attn_image", "detr_encoder.layers.{i}.cross_attn"),
    _Rule("transformer.encoder.layers.{i}.linear1", ("detr_encoder.layers.{i}.mlp.fc1",), "direct"),
    _Rule("transformer.encoder.layers.{i}.linear2", ("detr_encoder.layers.{i}.mlp.fc2",), "direct"),
    *_carved("transformer.decoder.layers.{i}.self_attn", "detr_decoder.layers.{i}.self_attn"),
    *_carved("transformer.decoder.layers.{i}.ca_text", "detr_decoder.layers.{i}.text_cross_attn"),
    *_carved("transformer.decoder.layers.{i}.cross_attn", "detr_decoder.layers.{i}.vision_cross_attn"),
    _Rule("transformer.decoder.layers.{i}.linear1", ("detr_decoder.layers.{i}.mlp.fc1",), "direct"),
    _Rule("transformer.decoder.layers.{i}.linear2", ("detr_decoder.layers.{i}.mlp.fc2",), "direct"),
    *[
        _Rule(f"geometry_encoder.{n}", (), NO_COUNTERPART)
        for n in ("points_direct_project", "points_pool_project", "points_pos_enc_project")
    ],
)


def _regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)"))


_META_INDEX = [(_regex(r.meta), r) for r in _RULES]
_HF_INDEX = [(_regex(h), r, k) for r in _RULES for k, h in enumerate(r.hf)]


@dataclass(frozen=True)
class LayerMapping:
    meta_module: str
    hf_modules: tuple[str, ...]
    kind: str  # direct | direct_same_name | fused_qkv_split | mha_in_proj_row_block | NO_HF_COUNTERPART


def map_meta_module(meta_module: str) -> LayerMapping | None:
    """The transformers module(s) an upstream (Meta-named) LoRA layer belongs to, or None if unknown."""
    for regex, rule in _META_INDEX:
        m = regex.fullmatch(meta_module)
        if m:
            i = m.groupdict().get("i")
            return LayerMapping(meta_module, tuple(h.format(i=i) for h in rule.hf), rule.kind)
    return None


def meta_module_for(hf_module: str) -> tuple[LayerMapping, int] | None:
    """Inverse: the Meta module a transformers layer came from, and its block index in a fused qkv."""
    for regex, rule, block in _HF_INDEX:
        m = regex.fullmatch(hf_module)
        if m:
            return map_meta_module(rule.meta.format(i=m.groupdict().get("i"))), block
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "no message"


def load_upstream_file(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors only, never code; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AdapterError(
            f"{path}: refused to load: the file holds Python objects besides tensors, and unpickling them could "
            f"run code (loaded with weights_only=True). An upstream adapter is a plain dict of tensors; "
            f"re-export it with torch.save(state_dict) from a trusted environment. ({_first_line(exc)})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle stream raises Runtime/EOF/Index/Key/Type/... errors
        raise AdapterError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__}: {_first_line(exc)}); "
            f"it may be truncated: download it again"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterError(f"{path}: expected a dict of tensors (upstream best_lora_weights.pt format)")
    return state


def _group_layers(state: dict[str, torch.Tensor], origin: str) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, tensor in state.items():
        m = re.fullmatch(r"(?P<module>.+)\.lora\.lora_(?P<ab>[AB])", key)
        if not m:
            bad.append(key)
            continue
        layers.setdefault(m["module"], {})[m["ab"]] = tensor
    if bad:
        raise AdapterError(
            f"{origin}: {len(bad)} keys are not upstream LoRA keys '<module>.lora.lora_A/B' (first: {bad[:_SHOW]})"
        )
    unpaired = [m for m, ab in layers.items() if set(ab) != {"A", "B"}]
    if unpaired:
        raise AdapterError(
            f"{origin}: {len(unpaired)} layers lack lora_A or lora_B (first: {unpaired[:_SHOW]}); "
            f"the file is incomplete"
        )
    return layers


def upstream_to_peft(
    state: dict[str, torch.Tensor], origin: str = "<upstream>"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Convert an upstream state dict; returns (PEFT state, unused point-prompt tensors, rank)."""
    layers = _group_layers(state, origin)
    peft: dict[str, torch.Tensor] = {}
    unused: dict[str, torch.Tensor] = {}
    unknown, wrong, ranks = [], [], set()
    for module, ab in layers.items():
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            wrong.append(f"{module}: A{tuple(a.shape)} B{tuple(b.shape)}")
            continue
        ranks.add(a.shape[1])
        mapping = map_meta_module(module)
        if mapping is None:
            unknown.append(module)
        elif mapping.kind == NO_COUNTERPART:
            unused[f"{module}.lora.lora_A"], unused[f"{module}.lora.lora_B"] = a, b
        elif mapping.kind == "fused_qkv_split":
            if b.shape[1] % 3:
                wrong.append(f"{module}: fused qkv B{tuple(b.shape)} is not three equal blocks")
                continue
            for hf, block in zip(mapping.hf_modules, b.t().chunk(3, dim=0)):
                peft[f"{_PEFT_PREFIX}{hf}.lora_A.weight"] = a.t().contiguous()
                peft[f"{_PEFT_PREFIX}{hf}.lora_B.weight"] = block.contiguous()
        else:
            (hf,) = mapping.hf_modules
            peft[f"{_PEFT_PREFIX}{hf}.lora_A.weight"] = a.t().contiguous()
            peft[f"{_PEFT_PREFIX}{hf}.lora_B.weight"] = b.t().contiguous()
    if unknown:
        raise AdapterError(
            f"{origin}: {len(unknown)} of {len(layers)} layers name modules SAM3 does not have "
            f"(first: {sorted(unknown)[:_SHOW]}); is this a MedSAM3/SAM3 adapter?"
        )
    if wrong:
        raise AdapterError(f"{origin}: {len(wrong)} layers have inconsistent shapes (first: {wrong[:_SHOW]})")
    if len(ranks) != 1:
        raise AdapterError(f"{origin}: layers disagree on the LoRA rank ({sorted(ranks)})")
    if unused:
        logger.info(
            "%s: dropped %d point-prompt LoRA layers with no transformers counterpart (%s); they take no "
            "part in text or box prompts",
            origin,
            len(unused) // 2,
            ", ".join(sorted({k.rsplit(".lora.", 1)[0] for k in unused})),
        )
    return peft, unused, ranks.pop()


def read_upstream_adapter(path: str | Path) -> AdapterWeights:
    """Load an upstream ``.pt`` as PEFT-named weights; its rank wins over the config's (with a warning)."""
    peft, _unused, rank = upstream_to_peft(load_upstream_file(path), str(path))
    return AdapterWeights(state=peft, rank=rank, alpha=None, origin=str(path), rank_must_match_config=False)


def peft_to_upstream(
    peft: dict[str, torch.Tensor], unused: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`upstream_to_peft`; refuses q/k/v whose A differ (upstream's fused qkv shares one A)."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in peft.items():
        m = re.fullmatch(rf"{re.escape(_PEFT_PREFIX)}(?P<module>.+)\.lora_(?P<ab>[AB])\.weight", key)
        if not m:
            raise AdapterError(f"{key}: not a PEFT LoRA key (expected base_model.model.<module>.lora_A.weight)")
        by_module.setdefault(m["module"], {})[m["ab"]] = tensor
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    unmapped = []
    for hf, ab in by_module.items():
        hit = meta_module_for(hf)
        if hit is None:
            unmapped.append(hf)
            continue
        mapping, block = hit
        if mapping.kind == "fused_qkv_split":
            fused.setdefault(mapping.meta_module, {})[block] = ab
        else:
            out[f"{mapping.meta_module}.lora.lora_A"] = ab["A"].t().contiguous()
            out[f"{mapping.meta_module}.lora.lora_B"] = ab["B"].t().contiguous()
    if unmapped:
        raise AdapterError(
            f"{len(unmapped)} LoRA layers have no place in upstream's format (first: {sorted(unmapped)[:_SHOW]})"
        )
    for meta, blocks in fused.items():
        if sorted(blocks) != [0, 1, 2]:
            raise AdapterError(
                f"{meta}: upstream's fused qkv needs LoRA on all of q, k and v; found blocks {sorted(blocks)}"
            )
        a = blocks[0]["A"]
        if not all(torch.equal(a, blocks[k]["A"]) for k in (1, 2)):
            raise AdapterError(
                f"{meta}: q, k and v have different lora_A matrices; upstream's single fused qkv layer shares one A, "
                f"so this adapter (trained with separate q/k/v LoRA) cannot be expressed in the .pt format exactly. "
                f"Use the PEFT directory instead."
            )
        out[f"{meta}.lora.lora_A"] = a.t().contiguous()
        out[f"{meta}.lora.lora_B"] = torch.cat([blocks[k]["B"] for k in range(3)], dim=0).t().contiguous()
    out.update(unused or {})
    return out


def write_peft_adapter_dir(
    state: dict[str, torch.Tensor],
    out_dir: str | Path,
    rank: int,
    alpha: float,
    base_model: str,
    unused: dict[str, torch.Tensor] | None = None,
    metadata: dict | None = None,
) -> Path:
    """A PEFT adapter directory from PEFT-named tensors, without building the (3 GB) model."""
    import json

    from peft import LoraConfig
    from safetensors.torch import save_file

    from .peft_format import ADAPTER_WEIGHTS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = sorted({k[len(_PEFT_PREFIX) :].rsplit(".lora_", 1)[0] for k in state})
    LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        base_model_name_or_path=base_model,
    ).save_pretrained(str(out_dir))
    save_file(state, str(out_dir / ADAPTER_WEIGHTS))
    if unused:
        save_file(unused, str(out_dir / UNUSED_FILE))
    if metadata:
        (out_dir / "medsam3_adapter.json").write_text(json.dumps(metadata, indent=2))
    return out_dir


def convert_upstream_file(
    src: str | Path, out_dir: str | Path, alpha: float, base_model: str, concepts: list[str] | None = None
) -> Path:
    """``best_lora_weights.pt`` -> PEFT adapter dir + metadata (source, rank, alpha, base model, concepts)."""
    peft, unused, rank = upstream_to_peft(load_upstream_file(src), str(src))
    meta = {
        "source": str(src),
        "format": "converted from upstream MedSAM3 .pt",
        "rank": rank,
        "alpha": alpha,
        "base_model": base_model,
        "lora_layers": len(peft) // 2,
        "dropped_point_prompt_layers": len(unused) // 2,
        "concepts": concepts or [],
    }
    return write_peft_adapter_dir(peft, out_dir, rank, alpha, base_model, unused, meta)


def export_upstream_file(adapter_dir: str | Path, dst: str | Path) -> Path:
    """PEFT adapter dir -> upstream ``.pt`` (restoring point-prompt layers kept at conversion)."""
    from safetensors.torch import load_file

    from .peft_format import read_peft_adapter

    adapter = read_peft_adapter(adapter_dir)
    extra = Path(adapter_dir) / UNUSED_FILE
    state = peft_to_upstream(adapter.state, load_file(str(extra)) if extra.is_file() else None)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(dst)
    return dst
