"""SAM3's set-prediction loss, for ``transformers``' ``Sam3Model``, with auxiliary decoder layers.

What it reproduces (Meta's ``sam3/train/loss``, as configured by upstream MedSAM3's trainer):

* per decoder layer, a one-to-one Hungarian match (``HungarianMatcher``: class 2, L1 5, GIoU 2);
* ``loss_ce`` (weight 20): SAM3's IoU-aware BCE (``IABCEMdetr``): a matched query's target is the
  soft score ``p**0.25 * IoU**0.75`` (clamped >= 0.01, no gradient), its BCE is weighted by
  ``pos_weight=10``; unmatched queries get ``BCE * p**2`` (focal-style down-weighting of easy
  negatives); mean over all queries. ``class_loss="focal"`` switches to torchvision's
  ``sigmoid_focal_loss`` (alpha 0.25, gamma 2, sum / num_boxes) instead;
* ``loss_presence`` (weight 20): the presence token's logit vs "this prompt has >= 1 instance here",
  SAM3's ``sigmoid_focal_loss(alpha=0.5, gamma=0)`` = 0.5 x BCE, mean over prompts;
* presence and class are decoupled as in SAM3's image model (``use_presence=True``,
  ``supervise_joint_box_scores=False``): the class term of a prompt *without* targets is zeroed
  (recognition is the presence head's job; inference scores ``sigmoid(logit) * sigmoid(presence)``).
  ``absent_class_loss=True`` also pushes those queries' logits down;
* ``loss_bbox`` (5, L1 on normalised cxcywh) and ``loss_giou`` (2) on matched queries,
  sum / num_boxes;
* ``loss_mask`` (200, sigmoid focal 0.25/2, mean over pixels) and ``loss_dice`` (10) on matched
  queries of the **last layer only** (SAM3's mask loss has ``compute_aux=False``; the model predicts
  masks for the last layer only). Predicted masks are bilinearly resized to the target masks' size
  when they differ (SAM3 upsamples predictions to the targets); the dataset's default
  ``mask_resolution=288`` equals SAM3's output at 1008 px, so nothing is resized by default.
* Auxiliary layers: ``loss_ce``, ``loss_presence``, ``loss_bbox``, ``loss_giou`` on every earlier
  decoder layer with its own matching, same weights (SAM3's ``aux_outputs``).

Left out: SAM3's one-to-many (DAC) branch needs a second, self-attention-free set of decoder queries
that ``transformers``' decoder does not have; SAM3's optional ``scale_by_find_batch_size`` (x sqrt of
the number of prompts) is the trainer's choice; mask point-sampling (SAM3 default: off).

Normalisation ``num_boxes`` = number of target instances in the batch (>= 1). Under DDP pass the
all-reduced mean over ranks as ``num_boxes`` so every rank scales the same way (SAM3's "global").

Feeding the loss from ``Sam3Model`` (see ``DecoderLayerCapture``)::

    with DecoderLayerCapture(model) as capture:
        outputs = model(pixel_values=..., input_ids=..., attention_mask=...,
                        input_boxes=pad_boxes, input_boxes_labels=pad_labels)
    losses = criterion(capture.predictions(outputs), batch["queries"])
    losses["total"].backward()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import box_area, box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher, MatchIndices

__all__ = ["DecoderLayerCapture", "LossWeights", "Sam3Loss", "dice_loss"]

_LAST_LAYER_TERMS = ("loss_ce", "loss_presence", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
_AUX_TERMS = ("loss_ce", "loss_presence", "loss_bbox", "loss_giou")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the named loss terms; defaults are SAM3's / upstream MedSAM3's."""

    loss_ce: float = 20.0
    loss_presence: float = 20.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_boxes: torch.Tensor | float) -> torch.Tensor:
    """SAM3's dice: ``1 - (2|p*t| + 1) / (|p| + |t| + 1)`` per instance, summed, / num_boxes."""
    prob = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (xyxy); torchvision only has the all-pairs matrix."""
    top_left = torch.maximum(a[:, :2], b[:, :2])
    bottom_right = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=1e-7)


def _per_layer(tensor: torch.Tensor, name: str, base_dim: int) -> torch.Tensor:
    """Give ``tensor`` a leading layer dimension if it has only the last layer's."""
    if tensor.dim() == base_dim:
        return tensor.unsqueeze(0)
    if tensor.dim() == base_dim + 1:
        return tensor
    raise ValueError(f"{name}: expected {base_dim} or {base_dim + 1} dims, got shape {tuple(tensor.shape)}")


class Sam3Loss:
    """SAM3's matching loss over prompts (rows) and decoder layers.

    Args:
        weights: term weights (``LossWeights``).
        matcher: defaults to ``HungarianMatcher()`` (SAM3's costs).
        class_loss: ``"iabce"`` (SAM3) or ``"focal"`` (torchvision sigmoid focal loss).
        pos_weight: weight of matched queries in the IA-BCE term (SAM3: 10).
        focal_alpha, focal_gamma: IA-BCE soft-target exponent / negative down-weighting exponent
            (SAM3: 0.25, 2); the same values parameterise the focal variants.
        presence_alpha: alpha of the presence focal term with gamma 0 (SAM3: 0.5).
        absent_class_loss: also apply the class term to prompts without targets (SAM3: False).
        aux_loss: add the terms of the intermediate decoder layers when they are given.
    """

    def __init__(
        self,
        weights: LossWeights | None = None,
        matcher: HungarianMatcher | None = None,
        *,
        class_loss: Literal["iabce", "focal"] = "iabce",
        pos_weight: float = 10.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        presence_alpha: float = 0.5,
        absent_class_loss: bool = False,
        aux_loss: bool = True,
    ) -> None:
        if class_loss not in ("iabce", "focal"):
            raise ValueError(f"class_loss must be 'iabce' or 'focal', got {class_loss!r}")
        self.weights = weights or LossWeights()
        self.matcher = matcher or HungarianMatcher()
        self.class_loss = class_loss
        self.pos_weight = pos_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.presence_alpha = presence_alpha
        self.absent_class_loss = absent_class_loss
        self.aux_loss = aux_loss

    # ---------------------------------------------------------------- terms
    def _class_term(
        self,
        logits: torch.Tensor,
        boxes_xyxy: torch.Tensor,
        matched: tuple[torch.Tensor, torch.Tensor],
        target_xyxy: torch.Tensor,
        has_target: torch.Tensor,
        num_boxes: torch.Tensor,
    ) -> torch.Tensor:
        rows, cols = matched
        target = torch.zeros_like(logits)
        target[rows, cols] = 1.0
        keep = torch.ones_like(has_target) if self.absent_class_loss else has_target
        if self.class_loss == "focal":
            loss = sigmoid_focal_loss(logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")
            return (loss * keep[:, None]).sum() / num_boxes
        prob = logits.sigmoid()
        with torch.no_grad():
            soft = target.clone()
            if rows.numel():
                iou = _paired_iou(boxes_xyxy[rows, cols], target_xyxy)
                quality = prob[rows, cols] ** self.focal_alpha * iou ** (1 - self.focal_alpha)
                soft[rows, cols] = quality.clamp(min=0.01)
        positives = F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * target * self.pos_weight
        negatives = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 - target)
        negatives = negatives * prob**self.focal_gamma
        return ((positives + negatives) * keep[:, None]).mean()

    def _layer_terms(
        self,
        logits: torch.Tensor,
        boxes_xyxy: torch.Tensor,
        presence: torch.Tensor,
        target_boxes: Sequence[torch.Tensor],
        has_target: torch.Tensor,
        num_boxes: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], list[MatchIndices]]:
        indices = self.matcher(logits.detach(), boxes_xyxy.detach(), target_boxes)
        rows = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        cols = torch.cat([src for src, _ in indices])
        tgt_cxcywh = torch.cat([target_boxes[b][tgt] for b, (_, tgt) in enumerate(indices)]).to(logits.dtype)
        tgt_xyxy = box_convert(tgt_cxcywh, "cxcywh", "xyxy")

        terms = {
            "loss_ce": self._class_term(logits, boxes_xyxy, (rows, cols), tgt_xyxy, has_target, num_boxes),
            "loss_presence": sigmoid_focal_loss(
                presence, has_target, alpha=self.presence_alpha, gamma=0.0, reduction="mean"
            ),
        }
        if rows.numel():
            src_xyxy = boxes_xyxy[rows, cols]
            src_cxcywh = box_convert(src_xyxy, "xyxy", "cxcywh")
            terms["loss_bbox"] = F.l1_loss(src_cxcywh, tgt_cxcywh, reduction="sum") / num_boxes
            terms["loss_giou"] = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="sum") / num_boxes
        else:
            # Keep the graph connected (DDP) while contributing nothing.
            zero = boxes_xyxy.sum() * 0.0
            terms["loss_bbox"] = zero
            terms["loss_giou"] = zero.clone()
        return terms, indices

    def _mask_terms(
        self,
        pred_masks: torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Sequence[MatchIndices],
        num_boxes: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        device = pred_masks.device
        src, tgt = [], []
        for b, (src_idx, tgt_idx) in enumerate(indices):
            if src_idx.numel() == 0:
                continue
            target = targets[b]
            if "masks" not in target or target["masks"] is None:
                continue
            valid = target.get("mask_valid")
            if valid is not None:
                keep = valid.to(device=device, dtype=torch.bool)[tgt_idx]
                src_idx, tgt_idx = src_idx[keep], tgt_idx[keep]
            if src_idx.numel() == 0:
                continue
            src.append(pred_masks[b][src_idx].float())
            tgt.append(target["masks"].to(device=device, dtype=torch.float32)[tgt_idx])
        if not src:
            zero = pred_masks.sum().float() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src_masks = torch.cat(src)
        tgt_masks = torch.cat(tgt)
        if src_masks.shape[-2:] != tgt_masks.shape[-2:]:
            src_masks = F.interpolate(
                src_masks[:, None], size=tgt_masks.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
        focal = sigmoid_focal_loss(
            src_masks.flatten(1), tgt_masks.flatten(1), alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none"
        )
        return {
            "loss_mask": focal.mean(1).sum() / num_boxes,
            "loss_dice": dice_loss(src_masks, tgt_masks, num_boxes),
        }

    # ---------------------------------------------------------------- entry
    def __call__(
        self,
        predictions: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, Any]],
        num_boxes: float | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            predictions: ``pred_logits`` (L, B, Q), ``pred_boxes`` (L, B, Q, 4) normalised xyxy,
                ``presence_logits`` (L, B, 1) and ``pred_masks`` (B, Q, h, w) for the last layer.
                Without the leading L (last layer only) no auxiliary terms are computed.
                ``DecoderLayerCapture.predictions`` builds exactly this from a ``Sam3Model`` forward.
            targets: B mappings (one per prompt row, e.g. ``ConceptBatch["queries"]``) with
                ``boxes`` (N, 4) normalised cxcywh, ``masks`` (N, h', w') in {0, 1} and optionally
                ``mask_valid`` (N,) bool. N = 0 is a negative prompt.
            num_boxes: normaliser override (see module docstring); default: instances in ``targets``.

        Returns unweighted terms of the last layer (``loss_ce``, ``loss_presence``, ``loss_bbox``,
        ``loss_giou``, ``loss_mask``, ``loss_dice``), the same first four summed over the auxiliary
        layers with suffix ``_aux``, and the weighted sum ``total``. All float32 scalars.
        """
        pred_logits = _per_layer(predictions["pred_logits"], "pred_logits", 2)
        device = pred_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            pred_logits = pred_logits.float()
            pred_boxes = _per_layer(predictions["pred_boxes"], "pred_boxes", 3).float()
            presence = _per_layer(predictions["presence_logits"], "presence_logits", 2).float()
            if presence.shape[-1] != 1:
                raise ValueError(f"presence_logits: expected (B, 1) or (L, B, 1), got {tuple(presence.shape)}")
            presence = presence.squeeze(-1)
            # Not cast here: (B, Q, h, w) is large; only matched masks are gathered and cast.
            pred_masks = predictions["pred_masks"]
            num_layers, batch = pred_logits.shape[:2]
            if pred_boxes.shape[:3] != pred_logits.shape or presence.shape != (num_layers, batch):
                raise ValueError(
                    f"inconsistent prediction shapes: pred_logits {tuple(pred_logits.shape)}, "
                    f"pred_boxes {tuple(pred_boxes.shape)}, presence {tuple(presence.shape)}"
                )
            if len(targets) != batch:
                raise ValueError(f"{len(targets)} targets for {batch} prompt rows")
            target_boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
            has_target = torch.tensor([float(b.shape[0] > 0) for b in target_boxes], device=device)
            if num_boxes is None:
                num_boxes = sum(b.shape[0] for b in target_boxes)
            norm = torch.as_tensor(num_boxes, dtype=torch.float32, device=device).clamp(min=1.0)

            last, indices = self._layer_terms(
                pred_logits[-1], pred_boxes[-1], presence[-1], target_boxes, has_target, norm
            )
            last.update(self._mask_terms(pred_masks, targets, indices, norm))
            losses: dict[str, torch.Tensor] = dict(last)
            total = sum(getattr(self.weights, k) * last[k] for k in _LAST_LAYER_TERMS)

            aux = {f"{k}_aux": torch.zeros((), device=device) for k in _AUX_TERMS}
            if self.aux_loss:
                for layer in range(num_layers - 1):
                    terms, _ = self._layer_terms(
                        pred_logits[layer], pred_boxes[layer], presence[layer], target_boxes, has_target, norm
                    )
                    for k in _AUX_TERMS:
                        aux[f"{k}_aux"] = aux[f"{k}_aux"] + terms[k]
                        total = total + getattr(self.weights, k) * terms[k]
            losses.update(aux)
            losses["total"] = total
        return losses


class DecoderLayerCapture:
    """Recover every decoder layer's predictions from a ``Sam3Model`` forward.

    ``Sam3Model.forward`` computes class logits for all decoder layers (``dot_product_scoring`` on
    ``decoder_outputs.intermediate_hidden_states``) and has presence logits for all layers, but
    returns only the last layer's. This context manager puts forward hooks on the model's
    ``Sam3DetrDecoder`` and ``Sam3DotProductScoring`` (found by type, so PEFT/DDP wrappers are fine)
    and rebuilds the per-layer boxes exactly as the forward does::

        boxes_l = box_cxcywh_to_xyxy(sigmoid(inverse_sigmoid(reference_boxes_l) + box_head(hidden_l)))

    ``reference_boxes`` (L, B, Q, 4) is the input box each layer refined; the output field
    ``decoder_reference_boxes`` is that same tensor. ``output_hidden_states=True`` is *not* needed and
    not enough: ``decoder_hidden_states`` holds the raw layer outputs (B, 1+Q, H) with the presence
    token first and before ``output_layer_norm``, and the class logits also need the DETR encoder's
    text features, which the output does not carry - hence the hooks. Cost: one extra ``box_head``
    MLP call; the rest is what the forward computed anyway.

    Usage: run the forward inside ``with DecoderLayerCapture(model) as cap:`` and call
    ``cap.predictions(outputs)``; the last layer equals ``outputs.pred_logits``/``pred_boxes``/
    ``presence_logits`` exactly.
    """

    def __init__(self, model: nn.Module) -> None:
        from transformers.models.sam3.modeling_sam3 import Sam3DetrDecoder, Sam3DotProductScoring

        decoders = [m for m in model.modules() if isinstance(m, Sam3DetrDecoder)]
        scorers = [m for m in model.modules() if isinstance(m, Sam3DotProductScoring)]
        if len(decoders) != 1 or len(scorers) != 1:
            raise ValueError(
                f"expected one Sam3DetrDecoder and one Sam3DotProductScoring in the model, found "
                f"{len(decoders)} and {len(scorers)}"
            )
        self._decoder = decoders[0]
        self._scorer = scorers[0]
        self._handles: list[Any] = []
        self._decoder_out: Any = None
        self._scores: torch.Tensor | None = None

    def _on_decoder(self, module: nn.Module, args: Any, output: Any) -> None:
        self._decoder_out = output

    def _on_scorer(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._scores = output

    def __enter__(self) -> DecoderLayerCapture:
        self._handles = [
            self._decoder.register_forward_hook(self._on_decoder),
            self._scorer.register_forward_hook(self._on_scorer),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def predictions(self, outputs: Any) -> dict[str, torch.Tensor]:
        """The loss's input dict for ``outputs`` (a ``Sam3ImageSegmentationOutput``)."""
        from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

        if self._decoder_out is None or self._scores is None:
            raise RuntimeError("no forward was captured: run the model inside `with DecoderLayerCapture(model):`")
        pred_logits = self._scores.squeeze(-1)  # (L, B, Q)
        if pred_logits.shape[1:] != outputs.pred_logits.shape or not torch.equal(
            pred_logits[-1].detach(), outputs.pred_logits.detach()
        ):
            raise RuntimeError("captured layers do not belong to these outputs (was another forward run since?)")
        decoder = self._decoder
        hidden = self._decoder_out.intermediate_hidden_states  # (L, B, Q, H), already layer-normed
        reference = self._decoder_out.reference_boxes  # (L, B, Q, 4) cxcywh
        boxes = (inverse_sigmoid(reference) + decoder.box_head(hidden)).sigmoid()
        return {
            "pred_logits": pred_logits,
            "pred_boxes": box_convert(boxes, "cxcywh", "xyxy"),
            "presence_logits": self._decoder_out.presence_logits,  # (L, B, 1)
            "pred_masks": outputs.pred_masks,  # (B, Q, h, w), last layer
        }
