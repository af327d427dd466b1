"""ONNX Runtime in place of PyTorch under the same :class:`~.predictor.Predictor`.

:class:`OnnxSam3` answers the three calls the Predictor makes on a ``Sam3Model``
(``get_vision_features``, ``get_text_features`` and the forward over cached features) with the
graphs of :mod:`.onnx_export`, so pre-processing (the processor saved beside the graphs),
text caching, prompt batching and post-processing are the Predictor's own code, unchanged.

The folder's ``medsam3_onnx.json`` is checked at load against what the run would load
(:func:`.onnx_manifest.check_identity`): another adapter, base model or input size is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from transformers import Sam3Config, Sam3Processor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput, Sam3VisionEncoderOutput

from ..adapters.plan import RunPlan
from ..config import Config
from .onnx_export import GRAPHS, INT8_GRAPHS, PROMPT_INPUTS
from .onnx_manifest import OnnxFolderError, check_identity, read_manifest, source_identity, sources_identity
from .predictor import Predictor

__all__ = ["BACKENDS", "OnnxSam3", "load_predictor", "onnx_predictor", "onnx_precision"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


def _providers(device: str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device and device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise OnnxFolderError(
                f"--device {device} with --backend onnxruntime needs onnxruntime-gpu (CUDAExecutionProvider); "
                f"this onnxruntime has {', '.join(available)}. Use --device cpu or install onnxruntime-gpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _rows_of(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features per image and each row's image: undo the Predictor's per-row broadcast without a copy.

    ``select_vision`` expands one image's features to every row (stride 0): the graph takes the
    image once and an index per row; gathered features (several images) go in as they are.
    """
    rows = t.shape[0]
    if rows > 1 and t.stride(0) == 0:
        return t[:1].numpy(), np.zeros(rows, np.int64)
    return np.ascontiguousarray(t.numpy()), np.arange(rows, dtype=np.int64)


class OnnxSam3(torch.nn.Module):
    """The part of ``Sam3Model``'s interface the Predictor uses, run by ONNX Runtime sessions.

    A ``Module`` only so that the Predictor's ``.to(device).eval()`` apply; it holds no parameters.
    """

    def __init__(self, onnx_dir: str | Path, precision: str = "fp32", device: str | None = None):
        super().__init__()
        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_manifest(self.onnx_dir)
        files = dict(self.manifest["graphs"])
        if precision == "int8":
            missing = [n for n in INT8_GRAPHS if n not in self.manifest.get("int8_graphs", {})]
            if missing:
                raise OnnxFolderError(
                    f"{self.onnx_dir}: no int8 graphs; export them with `medsam3-export --onnx {self.onnx_dir} --int8`"
                )
            files.update(self.manifest["int8_graphs"])
        elif precision != "fp32":
            raise OnnxFolderError(f"--backend onnxruntime runs fp32 or int8, not {precision!r}")
        self.precision = precision
        self.prompt_rows = int(self.manifest["prompt_rows"])
        self.config = Sam3Config.from_pretrained(self.onnx_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch would (OMP_NUM_THREADS)
        # No memory arena: it keeps every block it ever grew, so attention's large temporaries stayed
        # resident (int8 vision pass at 1008 px: peak 6.4 GiB with it, 3.9 GiB without, same time).
        options.enable_cpu_mem_arena = False
        providers = _providers(device)
        self.sessions = {}
        for name in GRAPHS:
            path = self.onnx_dir / files[name]
            if not path.exists():
                raise OnnxFolderError(
                    f"{path}: missing; re-export the folder with medsam3-export --onnx {self.onnx_dir}"
                )
            self.sessions[name] = ort.InferenceSession(str(path), options, providers=providers)
        logger.info("ONNX Runtime %s graphs from %s (%s)", precision, self.onnx_dir, providers[0])

    def get_vision_features(self, pixel_values: torch.Tensor) -> Sam3VisionEncoderOutput:
        """FPN levels 0..2; the position encodings live in the prompt graph (they depend on shape only)."""
        out = self.sessions["vision"].run(None, {"pixel_values": pixel_values.float().numpy()})
        return Sam3VisionEncoderOutput(
            fpn_hidden_states=tuple(torch.from_numpy(o) for o in out), fpn_position_encoding=()
        )

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutputWithPooling:
        (embeds,) = self.sessions["text"].run(
            None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        )
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(embeds))

    def forward(
        self,
        vision_embeds: Sam3VisionEncoderOutput,
        text_embeds: BaseModelOutputWithPooling,
        attention_mask: torch.Tensor,
        input_boxes: torch.Tensor,
        input_boxes_labels: torch.Tensor,
    ) -> Sam3ImageSegmentationOutput:
        levels = [_rows_of(t) for t in vision_embeds.fpn_hidden_states]
        n = len(levels[0][1])
        if n > self.prompt_rows:
            raise ValueError(f"{n} rows in one pass; this export takes at most {self.prompt_rows} (prompt_batch_size)")
        pad = np.r_[np.arange(n), np.full(self.prompt_rows - n, n - 1)]  # a short chunk repeats its last row
        feeds = dict(zip(PROMPT_INPUTS[:3], (f for f, _ in levels)))
        feeds.update(
            image_index=levels[0][1][pad],
            text_embeds=text_embeds.pooler_output.float().numpy()[pad],
            attention_mask=attention_mask.long().numpy()[pad],
            input_boxes=input_boxes.float().numpy()[pad],
            input_boxes_labels=input_boxes_labels.long().numpy()[pad],
        )
        outputs = self.sessions["prompt"].run(None, feeds)
        logits, boxes, masks, presence = (torch.from_numpy(o[:n]) for o in outputs)
        return Sam3ImageSegmentationOutput(
            pred_logits=logits, pred_boxes=boxes, pred_masks=masks, presence_logits=presence
        )


def onnx_precision(precision: str | None) -> str:
    """The ORT graphs to run for a ``--precision``: int8, else fp32 (auto and fp32; bf16 is refused)."""
    if precision in (None, "auto", "fp32"):
        return "fp32"
    if precision == "int8":
        return "int8"
    raise OnnxFolderError(f"--precision {precision} is not available with --backend onnxruntime; use fp32 or int8")


def onnx_predictor(
    cfg: Config | RunPlan,
    onnx_dir: str | Path,
    weights: str | None = None,
    precision: str | None = None,
    device: str | None = None,
) -> Predictor:
    """A Predictor over an exported folder, after checking it holds what the run would load.

    Given a run plan (the CLI), its sources are checked and the Predictor keeps it (threshold,
    concepts); given a config and ``weights`` (scripts), they are resolved as a plan would.
    """
    plan = cfg if isinstance(cfg, RunPlan) else None
    if plan is not None:
        cfg, device = plan.cfg, device or plan.device
    manifest = read_manifest(onnx_dir)
    identity = sources_identity(plan.sources) if plan is not None else source_identity(cfg, weights)
    check_identity(onnx_dir, manifest, identity)
    if cfg.hardware.use_compile:
        logger.warning("hardware.use_compile applies to PyTorch; ignored with --backend onnxruntime")
    model = OnnxSam3(onnx_dir, onnx_precision(precision), device)
    processor = Sam3Processor.from_pretrained(onnx_dir)
    # Rows per pass are fixed at export (onnx_export: SAM3's geometry encoder keeps them static).
    predictor = Predictor(model, processor, device="cpu", precision="fp32", prompt_batch_size=model.prompt_rows)
    origin = manifest.get("adapter") or "unknown"
    predictor.adapter_origin = f"{origin} (ONNX Runtime {model.precision}, {Path(onnx_dir)})"
    predictor.plan = plan
    return predictor


def load_predictor(
    plan: RunPlan, backend: str = "torch", onnx_dir: str | Path | None = None, precision: str | None = None
) -> Predictor:
    """The Predictor a run plan names, on the chosen backend: what infer_sam.py, evaluation and the app load."""
    if backend == "onnxruntime":
        if onnx_dir is None:
            raise OnnxFolderError(
                "--backend onnxruntime needs --onnx-dir DIR (write one with medsam3-export --onnx DIR)"
            )
        return onnx_predictor(plan, onnx_dir, precision=precision)
    if backend != "torch":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return Predictor.from_plan(plan)
