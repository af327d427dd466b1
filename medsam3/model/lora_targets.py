"""Which transformers SAM3 Linear layers get LoRA, from upstream's target names and component flags.

Upstream MedSAM3 (on Meta's SAM3 code) wrapped every Linear whose *last name part contains* one
of ``lora.target_modules``, inside the components switched on by the ``apply_to_*`` flags. The
transformers port names those layers differently, so each transformers layer is listed here
with the Meta name part it had; upstream's "contains" rule is then applied to that name. With
MedSAM3-v1's config this selects exactly the 519 layers its released weights map to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch.nn as nn

from ..config import LoraConfigSection

__all__ = ["COMPONENTS", "TargetRule", "TARGET_RULES", "select_lora_targets"]

COMPONENTS = (
    "vision_encoder",
    "text_encoder",
    "geometry_encoder",
    "detr_encoder",
    "detr_decoder",
    "mask_decoder",
)

_N = r"\d+"
_ATTN = r"(?:self_attn|cross_attn)"
_DEC_ATTN = r"(?:self_attn|text_cross_attn|vision_cross_attn)"


@dataclass(frozen=True)
class TargetRule:
    component: str
    pattern: str
    """Full-match regex over transformers module names; group 'qkv' picks q/k/v when present."""
    meta_name: str | dict[str, str]
    """Last name part upstream saw (Meta SAM3 naming), or a map from group 'part' to it."""

    def meta_leaf(self, match: re.Match) -> str:
        if isinstance(self.meta_name, str):
            return self.meta_name
        return self.meta_name[match.group("part")]


_QKVO_CARVED = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}

TARGET_RULES: tuple[TargetRule, ...] = (
    # ViT: Meta has a fused `qkv` Linear and `proj`; transformers splits q/k/v.
    TargetRule("vision_encoder", rf"vision_encoder\.backbone\.layers\.{_N}\.attention\.(?P<part>[qkv])_proj", "qkv"),
    TargetRule("vision_encoder", rf"vision_encoder\.backbone\.layers\.{_N}\.attention\.o_proj", "proj"),
    TargetRule(
        "vision_encoder",
        rf"vision_encoder\.backbone\.layers\.{_N}\.mlp\.(?P<part>fc1|fc2)",
        {"fc1": "fc1", "fc2": "fc2"},
    ),
    # Text (CLIP): Meta's nn.MultiheadAttention was carved by upstream into q/k/v/out_proj; MLP c_fc/c_proj.
    TargetRule(
        "text_encoder",
        rf"text_encoder\.text_model\.encoder\.layers\.{_N}\.self_attn\.(?P<part>q|k|v|out)_proj",
        {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"},
    ),
    TargetRule(
        "text_encoder",
        rf"text_encoder\.text_model\.encoder\.layers\.{_N}\.mlp\.(?P<part>fc1|fc2)",
        {"fc1": "c_fc", "fc2": "c_proj"},
    ),
    # Geometry encoder.
    TargetRule("geometry_encoder", rf"geometry_encoder\.layers\.{_N}\.{_ATTN}\.(?P<part>[qkvo])_proj", _QKVO_CARVED),
    TargetRule(
        "geometry_encoder",
        rf"geometry_encoder\.layers\.{_N}\.mlp\.(?P<part>fc1|fc2)",
        {"fc1": "linear1", "fc2": "linear2"},
    ),
    TargetRule(
        "geometry_encoder",
        r"geometry_encoder\.(?P<part>boxes_direct_project|boxes_pos_enc_project|final_proj)",
        {
            "boxes_direct_project": "boxes_direct_project",
            "boxes_pos_enc_project": "boxes_pos_enc_project",
            "final_proj": "final_proj",
        },
    ),
    # DETR encoder.
    TargetRule("detr_encoder", rf"detr_encoder\.layers\.{_N}\.{_ATTN}\.(?P<part>[qkvo])_proj", _QKVO_CARVED),
    TargetRule(
        "detr_encoder", rf"detr_encoder\.layers\.{_N}\.mlp\.(?P<part>fc1|fc2)", {"fc1": "linear1", "fc2": "linear2"}
    ),
    # DETR decoder, and the query/prompt scoring that reads its output (Meta: dot_prod_scoring).
    TargetRule("detr_decoder", rf"detr_decoder\.layers\.{_N}\.{_DEC_ATTN}\.(?P<part>[qkvo])_proj", _QKVO_CARVED),
    TargetRule(
        "detr_decoder", rf"detr_decoder\.layers\.{_N}\.mlp\.(?P<part>fc1|fc2)", {"fc1": "linear1", "fc2": "linear2"}
    ),
    TargetRule(
        "detr_decoder",
        r"dot_product_scoring\.(?P<part>query_proj|text_proj)",
        {"query_proj": "hs_proj", "text_proj": "prompt_proj"},
    ),
    # Mask decoder (Meta: segmentation_head.cross_attend_prompt).
    TargetRule("mask_decoder", r"mask_decoder\.prompt_cross_attn\.(?P<part>[qkvo])_proj", _QKVO_CARVED),
)

_COMPILED = tuple((rule, re.compile(rule.pattern)) for rule in TARGET_RULES)


def match_rule(module_name: str) -> tuple[TargetRule, str] | None:
    """The rule covering a transformers module name and the Meta leaf name upstream matched against."""
    for rule, regex in _COMPILED:
        m = regex.fullmatch(module_name)
        if m:
            return rule, rule.meta_leaf(m)
    return None


def _enabled_components(lora: LoraConfigSection) -> set[str]:
    return {c for c in COMPONENTS if getattr(lora, f"apply_to_{c}")}


def select_lora_targets(named_modules: Iterable[tuple[str, nn.Module]], lora: LoraConfigSection) -> list[str]:
    """Full names of the Linear layers to wrap, in model order."""
    enabled = _enabled_components(lora)
    targets = list(lora.target_modules)
    selected = []
    for name, module in named_modules:
        if not isinstance(module, nn.Linear):
            continue
        hit = match_rule(name)
        if hit is None:
            continue
        rule, meta_leaf = hit
        if rule.component in enabled and any(t in meta_leaf for t in targets):
            selected.append(name)
    return selected
