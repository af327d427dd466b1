"""Predictor: embed an image once, then answer any number of text prompts against it.

The vision encoder is ~90% of a SAM3 forward, so ``set_image`` runs it once and ``predict``
runs only the text, geometry, DETR and mask parts, for many prompts in batched passes over the
cached features (expanded, not copied). Text embeddings are cached per prompt string.

Text-only prompts carry one padding box (label -10): transformers then runs the geometry
encoder, whose learned CLS token Meta's reference always appends. MedSAM3-v1 was trained with
it; without it logits move by ~0.05 and masks by ~0.8 (docs/architecture.md, "Geometry CLS").
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_convert
from transformers import Sam3Processor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from ..adapters.plan import RunPlan
from ..config import Config
from ..errors import UserError
from ..model import resolve_device, unwrap
from .postprocess import Detections, detection_scores, postprocess_query_outputs

__all__ = [
    "ImageInput",
    "Predictor",
    "RawPromptOutput",
    "default_prompt_batch_size",
    "normalised_cxcywh",
    "PAD_BOX",
    "PAD_LABEL",
    "TEXT_MAX_LENGTH",
    "padding_geometry",
    "select_vision",
    "tokenize_prompts",
]

logger = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, Image.Image, str, Path]
PAD_BOX = (0.5, 0.5, 0.1, 0.1)  # cxcywh, ignored by attention: it only makes the geometry CLS run
PAD_LABEL = -10
TEXT_MAX_LENGTH = 32  # what Sam3Processor pads prompts to


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` padded to SAM3's text length (inference and training alike)."""
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def padding_geometry(rows: int, slots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``slots`` padding boxes per row: with them a text-only prompt gets the geometry CLS (docs/architecture.md)."""
    boxes = torch.tensor([PAD_BOX], dtype=torch.float32).repeat(rows, slots, 1)
    labels = torch.full((rows, slots), PAD_LABEL, dtype=torch.long)
    return boxes, labels


def select_vision(vision: Sam3VisionEncoderOutput, image_index) -> Sam3VisionEncoderOutput:
    """The vision features of ``image_index[i]`` for each prompt row ``i``.

    One image: its features are broadcast (``expand``, no copy); several: gathered per row.

    On CPU, bf16 features (from a bf16 autocast vision pass) are handed on as fp32: SAM3's
    geometry encoder casts bf16 features to fp16 for ``roi_align``, and CPU autocast rejects fp16
    inputs ("Unexpected floating ScalarType in at::autocast::prioritize"). Autocast still runs the
    prompt path's matmuls in bf16.
    """
    first = vision.fpn_hidden_states[0]
    if first.shape[0] == 1:
        pick = lambda t: t.expand(len(image_index), *t.shape[1:])  # noqa: E731
    else:
        idx = torch.as_tensor(image_index, device=first.device)
        pick = lambda t: t.index_select(0, idx)  # noqa: E731
    if first.device.type == "cpu" and first.dtype == torch.bfloat16:
        pick_as_is = pick
        pick = lambda t: pick_as_is(t.float())  # noqa: E731
    return Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(pick(t) for t in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(pick(t) for t in vision.fpn_position_encoding),
    )


_TEXT_CACHE_SIZE = 512


def normalised_cxcywh(boxes_xyxy: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(K, 4) pixel xyxy exemplar boxes of an image of ``size`` (h, w) -> SAM3's cxcywh in [0, 1]."""
    h, w = size
    xyxy = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4) / torch.tensor([w, h, w, h])
    return box_convert(xyxy, "xyxy", "cxcywh").clamp(0, 1)


# On a CPU, rows per pass are chosen so that the pixel decoder's finest activation (hidden x
# (4 x grid)^2 floats per row) stays near this size: 2 rows of full-size SAM3 at 504 px (~42 MB).
_CPU_PROMPT_ACTIVATION_FLOATS = 2 * 256 * 144 * 144


def default_prompt_batch_size(model: torch.nn.Module, processor: Sam3Processor, device: torch.device) -> int:
    """Rows (image, prompt) per batched pass of the prompt path.

    On a GPU, larger batches fill the device: 16. On a CPU, large ones are slower, not faster: the
    prompt path's activations (pixel decoder at 4x the feature grid, the decoder's box bias)
    outgrow the caches; 7 prompts at 504 px took 3.5-5.4 s in one pass of 7 vs 2.5-2.7 s in
    passes of 2 (``scripts/bench_inference.py --prompt-batch-size``). So a CPU pass holds as many
    rows as keep that activation near 42 MB: 2 at 504 px, 4 at 336 px, 16 for small models.
    """
    if device.type == "cuda":
        return 16
    config = unwrap(model).config
    grid = processor.image_processor.size["height"] // config.vision_config.backbone_config.patch_size
    per_row = config.mask_decoder_config.hidden_size * (4 * grid) ** 2
    return max(1, min(16, _CPU_PROMPT_ACTIVATION_FLOATS // per_row))


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """(H, W, 3) uint8 from an array, a PIL image or a path (paths go through :mod:`medsam3.io`)."""
    if isinstance(image, (str, Path)):
        from ..io import read_rgb

        return read_rgb(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # a copy: torch warns on read-only arrays
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, a PIL image or a path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UserError(
            f"image array has dtype {image.dtype}; pass uint8 RGB, or scale it first "
            f"(medsam3.io applies CT windows / percentile scaling to medical intensities)"
        )
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.array(image[:, :, :3], order="C")  # a writable copy (np.asarray(PIL) is read-only)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise UserError(f"image array has shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


def _is_box_list(obj) -> bool:
    """True for one list of boxes ((K, 4) or a single (4,)), as opposed to one list per prompt.

    A per-prompt list may hold ``None`` ("no boxes for this prompt"): ``[None] * 4`` is four
    prompts without boxes, not one box of four NaN coordinates.
    """
    if not isinstance(obj, np.ndarray) and any(item is None for item in obj):
        return False
    try:
        arr = np.asarray(obj, dtype=np.float32)
    except (ValueError, TypeError):
        return False
    return (arr.ndim == 2 and arr.shape[1] == 4) or arr.shape == (4,)


def _normalise_boxes(boxes, labels, n_prompts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per prompt: (K, 4) xyxy pixel boxes and (K,) labels (1 positive, 0 negative exemplar)."""
    if boxes is None or (not isinstance(boxes, np.ndarray) and len(boxes) == 0):
        boxes, labels = [None] * n_prompts, None
    elif _is_box_list(boxes):  # one set of boxes shared by every prompt
        boxes, labels = [boxes] * n_prompts, [labels] * n_prompts
    if labels is None:
        labels = [None] * n_prompts
    if len(boxes) != n_prompts or len(labels) != n_prompts:
        raise UserError(f"got boxes for {len(boxes)} prompts but {n_prompts} prompts")
    out = []
    for b, lab in zip(boxes, labels):
        b = np.zeros((0, 4), np.float32) if b is None else np.asarray(b, dtype=np.float32).reshape(-1, 4)
        if np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
            raise UserError(f"boxes must be x1 y1 x2 y2 with x2 > x1 and y2 > y1, got {b.tolist()}")
        lab = np.ones(len(b), np.int64) if lab is None else np.asarray(lab, dtype=np.int64).reshape(-1)
        if len(lab) != len(b) or not np.isin(lab, (0, 1)).all():
            raise UserError(f"box labels must be 1 (positive) or 0 (negative), one per box; got {lab.tolist()}")
        out.append((b, lab))
    return out


@dataclass(frozen=True)
class RawPromptOutput:
    """One prompt row's per-query outputs, before threshold and NMS: what re-filtering needs."""

    prompt: str
    image_index: int
    scores: torch.Tensor  # (Q,) sigmoid(logit) x sigmoid(presence)
    boxes: torch.Tensor  # (Q, 4) normalised xyxy, as SAM3 returns them (pred_boxes)
    mask_logits: torch.Tensor  # (Q, h, w) at the mask decoder's resolution

    def detached(self) -> RawPromptOutput:
        """A copy that owns its memory (so evicting it from a cache frees it)."""
        return RawPromptOutput(
            self.prompt, self.image_index, self.scores.clone(), self.boxes.clone(), self.mask_logits.clone()
        )

    def detections(self, size: tuple[int, int], threshold: float, nms_iou: float | None) -> Detections:
        return postprocess_query_outputs(
            self.prompt, self.scores, self.boxes, self.mask_logits, size, threshold, nms_iou
        )


class Predictor:
    """Text-prompted SAM3 (+ LoRA) on one image at a time, many prompts per image.

    >>> predictor = Predictor.from_config(load_config("configs/full_lora_config.yaml"))
    >>> predictor.set_image("scan.png")
    >>> liver, tumour = predictor.predict(["liver", "liver tumor"], threshold=0.5)
    >>> liver.masks.shape   # (N, H, W) bool at the original resolution
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Sam3Processor,
        device: str | torch.device | None = None,
        precision: str = "auto",
        prompt_batch_size: int | None = None,
    ):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = unwrap(model).to(self.device).eval()
        self.processor = processor
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.prompt_batch_size = prompt_batch_size or default_prompt_batch_size(self.model, processor, self.device)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._vision: Sam3VisionEncoderOutput | None = None
        self._size: tuple[int, int] | None = None
        self.plan: RunPlan | None = None

    def threshold_for(self, prompt: str, threshold: float | None = None) -> float:
        """``threshold`` if given, else the run plan's for this prompt (flag > per concept > recorded > 0.5)."""
        if threshold is not None:
            return threshold
        return self.plan.threshold_for(prompt) if self.plan is not None else 0.5

    @classmethod
    def from_config(
        cls, cfg: Config, weights: str | None = None, device: str | None = None, precision: str | None = None
    ) -> "Predictor":
        """Base model + adapter as the config (or ``weights``) says: a run plan, then :meth:`from_plan`."""
        from ..adapters.plan import plan_run

        return cls.from_plan(plan_run(cfg, weights, device=device, precision=precision))

    @classmethod
    def from_plan(cls, plan: RunPlan) -> "Predictor":
        """The model a run plan names (see :mod:`medsam3.adapters.plan`), on its device and precision.

        ``predictor.plan`` keeps the plan: its threshold is the default of :meth:`predict`.
        """
        from ..adapters.loading import load_model

        model, processor, origin = load_model(plan=plan)
        logger.info("adapter: %s", origin)
        predictor = cls(model, processor, device=plan.device, precision=plan.precision)
        predictor.adapter_origin = origin
        predictor.plan = plan
        if plan.cfg.hardware.use_compile:
            predictor.compile_vision_encoder()
        return predictor

    def compile_vision_encoder(self) -> None:
        """``torch.compile`` the vision encoder in place (``hardware.use_compile``).

        Only the vision encoder: it is ~90% of the work and sees one input shape per resolution,
        while the prompt path's batch size varies from call to call. Compiled in place
        (``Module.compile``), so parameter names, adapters and state dicts are unchanged. The first
        image pays the compilation (tens of seconds on CPU); see docs/benchmarks.md for measured effects.
        """
        self.model.vision_encoder.compile(dynamic=False)
        logger.info("vision encoder compiled with torch.compile (first image compiles it)")

    # -- internals -----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageInput]) -> tuple[Sam3VisionEncoderOutput, list[tuple[int, int]]]:
        """One vision pass over a batch of images; returns the features and the original sizes."""
        arrays = [to_rgb_array(im) for im in images]
        with self._autocast():
            vision = self.model.get_vision_features(pixel_values=self._pixel_values(arrays))
        return vision, [a.shape[:2] for a in arrays]

    @torch.inference_mode()
    def _text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features and mask for ``prompts``, from the cache or one batched text-encoder pass.

        Trailing padding is cut off: SAM3's CLIP text encoder is causal, so a token's features do
        not depend on the padding after it, and every later use of the text (attention, pooling)
        masks padding out. A 3-token prompt is then encoded and attended to as 3 tokens, not 32;
        scores match the padded forward to float rounding (tests/inference/test_predictor.py).
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = tokenize_prompts(self.processor.tokenizer, missing)
            lengths = tokens["attention_mask"].sum(dim=1).tolist()
            longest = max(lengths)
            tokens = {k: v[:, :longest].to(self.device) for k, v in tokens.items()}
            with self._autocast():
                feats = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
            for i, (p, n) in enumerate(zip(missing, lengths)):
                self._text_cache[p] = (feats[i : i + 1, :n], tokens["attention_mask"][i : i + 1, :n])
                if len(self._text_cache) > _TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        cached = [self._text_cache[p] for p in prompts]
        longest = max(f.shape[1] for f, _ in cached)
        embeds = torch.cat([F.pad(f, (0, 0, 0, longest - f.shape[1])) for f, _ in cached])
        mask = torch.cat([F.pad(m, (0, longest - m.shape[1])) for _, m in cached])
        return embeds, mask

    def clear_cache(self) -> None:
        """Forget cached text embeddings (call after changing the model's weights)."""
        self._text_cache.clear()

    def _geometry(self, rows_boxes: list[tuple[np.ndarray, np.ndarray]], sizes: list[tuple[int, int]]):
        k = max(1, max(len(b) for b, _ in rows_boxes))
        boxes, labels = padding_geometry(len(rows_boxes), k)
        for i, ((b, lab), (h, w)) in enumerate(zip(rows_boxes, sizes)):
            if len(b):
                boxes[i, : len(b)] = normalised_cxcywh(b, (h, w))
                labels[i, : len(b)] = torch.from_numpy(lab)
        return boxes.to(self.device), labels.to(self.device)

    @torch.inference_mode()
    def forward_rows(
        self,
        vision: Sam3VisionEncoderOutput,
        image_index: list[int],
        prompts: list[str],
        rows_boxes: list[tuple[np.ndarray, np.ndarray]],
        sizes: list[tuple[int, int]],
    ):
        """Raw SAM3 outputs for rows (image, prompt, boxes) in one batched pass over cached features."""
        text_embeds, text_mask = self._text(prompts)
        input_boxes, input_labels = self._geometry(rows_boxes, [sizes[i] for i in image_index])
        with self._autocast():
            return self.model(
                vision_embeds=select_vision(vision, image_index),
                text_embeds=BaseModelOutputWithPooling(pooler_output=text_embeds),
                attention_mask=text_mask,
                input_boxes=input_boxes,
                input_boxes_labels=input_labels,
            )

    def raw_outputs(
        self,
        vision: Sam3VisionEncoderOutput,
        sizes: list[tuple[int, int]],
        rows: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]],
    ) -> Iterator[RawPromptOutput]:
        """Per row (image index, prompt, (boxes, labels)): SAM3's scores, boxes and mask logits for every query.

        Rows run ``prompt_batch_size`` at a time over the cached features; the tensors of a row are views
        into its batch's outputs (``clone`` them to keep one row without pinning the batch). Thresholding
        and NMS are :func:`~.postprocess.postprocess_query_outputs`'s job: :meth:`predict_rows` applies
        them, and a caller that re-filters at other thresholds (the web app) keeps these instead.
        """
        for start in range(0, len(rows), self.prompt_batch_size):
            chunk = rows[start : start + self.prompt_batch_size]
            out = self.forward_rows(vision, [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], sizes)
            scores = detection_scores(out.pred_logits, out.presence_logits)
            for j, (image_i, prompt, _) in enumerate(chunk):
                yield RawPromptOutput(prompt, image_i, scores[j], out.pred_boxes[j], out.pred_masks[j])

    def predict_rows(
        self,
        vision: Sam3VisionEncoderOutput,
        sizes: list[tuple[int, int]],
        rows: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]],
        threshold: float | None,
        nms_iou: float | None,
    ) -> list[Detections]:
        """Detections for (image index, prompt, (boxes, labels)) rows over features from :meth:`encode_images`.

        ``threshold`` None: each prompt's threshold by the run plan (:meth:`threshold_for`).

        Each row is thresholded and NMS'd before its surviving masks are upsampled
        (:func:`.postprocess.postprocess_query_outputs`).
        """
        unknown = set(self.plan.unknown_prompts([r[1] for r in rows])) if self.plan is not None else set()
        results = []
        for raw in self.raw_outputs(vision, sizes, rows):
            det = raw.detections(sizes[raw.image_index], self.threshold_for(raw.prompt, threshold), nms_iou)
            det.unknown_concept = raw.prompt in unknown
            results.append(det)
        return results

    @staticmethod
    def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UserError("no prompt given; pass at least one text prompt such as 'liver'")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise UserError(f"empty prompt {p!r}; every prompt must be non-empty text")
        return prompts

    # -- public API ----------------------------------------------------------------------------
    def set_image(self, image: ImageInput) -> None:
        """Run the vision encoder once for ``image`` (array, PIL image or path)."""
        self._vision, (self._size,) = self.encode_images([image])

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of the current image."""
        return self._size

    def predict(
        self,
        prompts: str | Sequence[str],
        boxes=None,
        box_labels=None,
        threshold: float | None = None,
        nms_iou: float | None = 0.5,
    ) -> list[Detections]:
        """Detections for each prompt on the image given to :meth:`set_image`.

        ``boxes``: optional exemplar boxes (xyxy, pixels), either one list shared by all prompts
        or one list per prompt; ``box_labels`` 1 (positive, default) or 0 (negative) per box.
        ``threshold`` None: the run plan's, per concept (see :meth:`threshold_for`), else 0.5.
        """
        if self._vision is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        prompts = self._check_prompts(prompts)
        per_prompt_boxes = _normalise_boxes(boxes, box_labels, len(prompts))
        rows = [(0, p, b) for p, b in zip(prompts, per_prompt_boxes)]
        return self.predict_rows(self._vision, [self._size], rows, threshold, nms_iou)

    def predict_images(
        self,
        images: Sequence[ImageInput],
        prompts: str | Sequence[str],
        boxes=None,
        box_labels=None,
        threshold: float | None = None,
        nms_iou: float | None = 0.5,
    ) -> list[list[Detections]]:
        """All prompts on each of several images with one batched vision pass (e.g. volume slices).

        ``boxes`` / ``box_labels`` as in :meth:`predict` (pixels of each image), applied to every
        image. Returns one list of :class:`Detections` per image, in prompt order.
        """
        prompts = self._check_prompts(prompts)
        if len(images) == 0:
            return []
        per_prompt_boxes = _normalise_boxes(boxes, box_labels, len(prompts))
        vision, sizes = self.encode_images(images)
        rows = [(i, p, b) for i in range(len(sizes)) for p, b in zip(prompts, per_prompt_boxes)]
        flat = self.predict_rows(vision, sizes, rows, threshold, nms_iou)
        return [flat[i * len(prompts) : (i + 1) * len(prompts)] for i in range(len(sizes))]
