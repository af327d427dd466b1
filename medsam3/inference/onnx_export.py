"""SAM3 (+ merged adapter) as ONNX graphs that match the Predictor's split, via torch's exporter.

Three graphs, each a thin wrapper that calls transformers' own ``Sam3Model`` methods (nothing of
SAM3 is re-implemented here):

- ``vision.onnx``: ``pixel_values`` (N, 3, R, R) -> ``fpn0``, ``fpn1``, ``fpn2``, the three feature
  levels the prompt path reads (``get_vision_features``); run once per image.
- ``text.onnx``: ``input_ids``, ``attention_mask`` (B, T) -> ``text_embeds`` (``get_text_features``);
  its outputs are cached per prompt string, as in the PyTorch Predictor.
- ``prompt.onnx``: ``fpn0..2`` of N images, ``image_index`` (B,), ``text_embeds``, ``attention_mask``,
  ``input_boxes`` (B, K, 4), ``input_boxes_labels`` (B, K) -> ``pred_logits``, ``pred_boxes``,
  ``pred_masks``, ``presence_logits`` (``Sam3Model.forward`` on cached features). The position
  encodings depend only on the feature shape, so the graph computes them (SAM3's own sine module)
  instead of taking them as inputs; rows pick their image's features inside the graph.

B (rows), T (tokens), K (boxes) and N (images) are dynamic. torch's dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) is used; SAM3 exports with it once attention is the
``eager`` implementation (the SDPA path's decomposition fails on a non-contiguous view in the
DETR decoder's cross-attention). ``--int8`` also writes ``vision.int8.onnx``: the vision
encoder's linear layers (its MLPs by default) quantised with ONNX Runtime's dynamic quantisation
(:func:`quantize_graph`; why these layers: docs/onnx.md).
"""

from __future__ import annotations

import ast
import json
import logging
import time
from pathlib import Path

import torch
from transformers import Sam3Processor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from ..model import unwrap
from .onnx_manifest import MANIFEST_NAME, write_manifest
from .predictor import default_prompt_batch_size

__all__ = [
    "GRAPHS",
    "INT8_GRAPHS",
    "INT8_SCOPES",
    "OPSET",
    "export_onnx",
    "export_vision_graph",
    "merged_model",
    "quantize_graph",
]

logger = logging.getLogger(__name__)

OPSET = 18
GRAPHS = {"vision": "vision.onnx", "text": "text.onnx", "prompt": "prompt.onnx"}
# What ``int8`` quantises: the vision encoder's MatMul/Gemm weights (ViT, ~90% of the compute).
# The text and prompt graphs stay fp32 (docs/onnx.md: measured, they gain little and hold the scores).
INT8_GRAPHS = {"vision": "vision.int8.onnx"}
VISION_OUTPUTS = ["fpn0", "fpn1", "fpn2"]
PROMPT_INPUTS = [*VISION_OUTPUTS, "image_index", "text_embeds", "attention_mask", "input_boxes", "input_boxes_labels"]
PROMPT_OUTPUTS = ["pred_logits", "pred_boxes", "pred_masks", "presence_logits"]


class _Vision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return tuple(self.model.get_vision_features(pixel_values=pixel_values).fpn_hidden_states[:3])


class _Text(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class _Prompt(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fpn0, fpn1, fpn2, image_index, text_embeds, attention_mask, input_boxes, input_boxes_labels):
        sine = self.model.vision_encoder.neck.position_encoding
        levels = (fpn0, fpn1, fpn2)
        pos = tuple(sine(f[:1].shape, f.device, f.dtype).expand(image_index.shape[0], -1, -1, -1) for f in levels)
        feats = tuple(f.index_select(0, image_index) for f in levels)
        # Sam3Model.forward drops the last level ([:-1]); a repeated one stands in for the unused 4th.
        vision = Sam3VisionEncoderOutput(fpn_hidden_states=(*feats, feats[-1]), fpn_position_encoding=(*pos, pos[-1]))
        out = self.model(
            vision_embeds=vision,
            text_embeds=BaseModelOutputWithPooling(pooler_output=text_embeds),
            attention_mask=attention_mask,
            input_boxes=input_boxes,
            input_boxes_labels=input_boxes_labels,
        )
        return out.pred_logits, out.pred_boxes, out.pred_masks, out.presence_logits


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """A PeftModel's LoRA folded into its base weights, in place (no copy of a 3 GB model); else the model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload().eval()
    return unwrap(model).eval()


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs, outputs, dynamic) -> None:
    t0 = time.perf_counter()
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        dynamo=True,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=dynamic,
        opset_version=OPSET,
        external_data=True,
    )
    logger.info("exported %s in %.0f s", path.name, time.perf_counter() - t0)


INT8_SCOPES = {
    "mlp": "the vision encoder's MLP layers (fc1, fc2: two thirds of its weight arithmetic)",
    "linear": "every linear layer of the vision encoder (MLPs and attention projections)",
}


def _module_of(node) -> str:
    """The torch module a node came from, from the dynamo exporter's ``name_scopes`` metadata ('' if absent)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) > 1 else ""
    return ""


def quantize_graph(src: Path, dst: Path, scope: str = "mlp") -> int:
    """Dynamic int8 quantisation of linear-layer weights (per output channel); activations u8 at run time.

    u8 activations x s8 weights is the pairing ONNX Runtime's x86 kernels run on VNNI. ``scope``
    (:data:`INT8_SCOPES`): ``mlp`` is the default because quantising the attention projections
    too moved the demo's held-out Dice by up to 0.03 while MLPs alone stayed within 0.01
    (docs/onnx.md). Returns how many MatMul/Gemm nodes were quantised.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scope not in INT8_SCOPES:
        raise ValueError(f"int8 scope must be one of {sorted(INT8_SCOPES)}, got {scope!r}")
    graph = onnx.load(src, load_external_data=False).graph
    constant = {i.name for i in graph.initializer}
    linear = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constant]
    chosen = [n for n in linear if scope == "linear" or ".mlp" in _module_of(n)]
    if not chosen:
        raise RuntimeError(f"{src}: no {scope} layers found to quantise (exporter metadata missing?)")
    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per tensor to the root logger at INFO
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=[n.name for n in chosen],
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
    logger.info(
        "quantised %d of %d linear layers (%s) of %s -> %s in %.0f s",
        len(chosen),
        len(linear),
        scope,
        src.name,
        dst.name,
        time.perf_counter() - t0,
    )
    return len(chosen)


@torch.no_grad()
def export_onnx(
    model: torch.nn.Module,
    processor: Sam3Processor,
    out_dir: str | Path,
    identity: dict,
    origin: str = "",
    int8: bool = False,
    prompt_rows: int | None = None,
    int8_scope: str = "mlp",
) -> Path:
    """Write the three graphs, the processor, SAM3's config and ``medsam3_onnx.json`` into ``out_dir``.

    ``identity`` records what the weights are (see :func:`.onnx_manifest.source_identity`); a load
    compares it with what the run asks for. ``prompt_rows``: rows per prompt-graph pass (default:
    the Predictor's CPU batch for this model and resolution, :func:`.predictor.default_prompt_batch_size`,
    at most 4).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # an interrupted re-export must not look complete
    sam3 = merged_model(model)
    # Capped at 4: rows are static, so a short last batch computes padding (up to rows - 1 wasted rows).
    rows = prompt_rows or min(4, default_prompt_batch_size(sam3, processor, torch.device("cpu")))
    attention = sam3.config._attn_implementation
    sam3.set_attn_implementation("eager")  # see the module docstring
    try:
        _export_graphs(sam3, processor, out_dir, rows)
    finally:
        sam3.set_attn_implementation(attention)
    quantised = {}
    if int8:
        for name, file in INT8_GRAPHS.items():
            quantize_graph(out_dir / GRAPHS[name], out_dir / file, int8_scope)
            quantised[name] = file
    processor.save_pretrained(out_dir)
    sam3.config.save_pretrained(out_dir)
    import onnx
    import onnxruntime
    import transformers

    write_manifest(
        out_dir,
        {
            "opset": OPSET,
            "resolution": int(processor.image_processor.size["height"]),
            "prompt_rows": rows,
            "graphs": GRAPHS,
            "int8_graphs": quantised,
            "int8_quantised": (
                f"{INT8_SCOPES[int8_scope]}: weights s8 per output channel, activations u8 at run time (dynamic)"
                if quantised
                else None
            ),
            "identity": identity,
            "adapter": origin,
            "exported_with": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        },
    )
    logger.info("ONNX export -> %s (%s)", out_dir, json.dumps(sorted(GRAPHS.values()) + sorted(quantised.values())))
    return out_dir


@torch.no_grad()
def export_vision_graph(sam3: torch.nn.Module, resolution: int, path: str | Path) -> Path:
    """``vision.onnx`` alone: ``pixel_values`` (N, 3, R, R) -> ``fpn0..2``, N dynamic.

    The graph ``--precision int8`` quantises and where ~90% of the time goes; a merged model
    (:func:`merged_model`) in, exported with ``eager`` attention (the module docstring says why).
    """
    path = Path(path)
    sam3 = merged_model(sam3)
    attention = sam3.config._attn_implementation
    sam3.set_attn_implementation("eager")
    try:
        # Example inputs with every dynamic axis >= 2, so the exporter does not specialise them to 1.
        pixels = torch.zeros(2, 3, resolution, resolution)
        _export(_Vision(sam3), (pixels,), path, ["pixel_values"], VISION_OUTPUTS, ({0: "images"},))
    finally:
        sam3.set_attn_implementation(attention)
    return path


def _export_graphs(sam3, processor: Sam3Processor, out_dir: Path, rows: int) -> None:
    res = int(processor.image_processor.size["height"])
    export_vision_graph(sam3, res, out_dir / GRAPHS["vision"])
    # The prompt path reads SAM3's FPN at 4x, 2x and 1x the patch grid; the values do not matter for export.
    vision_cfg = sam3.config.vision_config
    grid = res // vision_cfg.backbone_config.patch_size
    feats = tuple(torch.randn(2, vision_cfg.fpn_hidden_size, s * grid, s * grid) for s in (4, 2, 1))
    # Distinct sizes per dynamic axis (images 2, rows 5, tokens 4, boxes 3): the exporter gives equal
    # example sizes one symbol.
    ids = torch.full((5, 4), int(processor.tokenizer.eos_token_id or 0), dtype=torch.long)
    mask = torch.ones(5, 4, dtype=torch.long)
    _export(
        _Text(sam3),
        (ids[:3], mask[:3]),
        out_dir / GRAPHS["text"],
        ["input_ids", "attention_mask"],
        ["text_embeds"],
        ({0: "rows", 1: "tokens"}, {0: "rows", 1: "tokens"}),
    )
    # Rows are static: SAM3's geometry encoder splits boxes per row (``unbind(0)`` before roi_align),
    # which torch.export cannot keep symbolic. OnnxSam3 pads a short last chunk up to ``rows``.
    index = torch.arange(rows) % 2
    labels = torch.tensor([[1, -10, -10], [1, 0, -10], [-10, -10, -10]])[index.new_tensor(range(rows)) % 3]
    prompt_args = (
        *feats,
        index,
        sam3.get_text_features(
            input_ids=ids[:1].expand(rows, -1), attention_mask=mask[:1].expand(rows, -1)
        ).pooler_output,
        mask[:1].expand(rows, -1),
        torch.full((rows, 3, 4), 0.3) + torch.arange(3).view(1, 3, 1) * 0.1,
        labels,
    )
    level = {0: "images"}
    dynamic = (level, level, level, None, {1: "tokens"}, {1: "tokens"}, {1: "boxes"}, {1: "boxes"})
    _export(_Prompt(sam3), prompt_args, out_dir / GRAPHS["prompt"], PROMPT_INPUTS, PROMPT_OUTPUTS, dynamic)
