"""Sam3Loss: behaviour on perfect/wrong/negative predictions, gradients, bf16, and a tiny Sam3Model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_convert

from medsam3.data.coco import CocoConceptDataset
from medsam3.data.collate import collate
from medsam3.train.loss import DecoderLayerCapture, LossWeights, Sam3Loss

Q, HW = 6, 16


def _targets():
    boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    masks = torch.zeros(2, HW, HW)
    masks[0, 2:6, 2:6] = 1
    masks[1, 6:13, 8:14] = 1
    return [{"boxes": boxes, "masks": masks}, {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, HW, HW)}]


def _predictions(perfect: bool, layers: int = 3) -> dict[str, torch.Tensor]:
    """Row 0 has two instances (queries 1 and 4 predict them), row 1 is a negative prompt."""
    targets = _targets()
    logits = torch.full((layers, 2, Q), -8.0)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(layers, 2, Q, 1)
    masks = torch.full((2, Q, HW, HW), -10.0)
    presence = torch.tensor([[8.0], [-8.0]]).repeat(layers, 1, 1)
    if perfect:
        for query, inst in ((1, 0), (4, 1)):
            logits[:, 0, query] = 8.0
            boxes[:, 0, query] = targets[0]["boxes"][inst]
            masks[0, query] = targets[0]["masks"][inst] * 20 - 10
    else:
        logits[:, 1, :2] = 8.0  # confident detections for an absent concept
        boxes[:, 0, 1] = torch.tensor([0.8, 0.2, 0.1, 0.1])
        presence = -presence
    return {
        "pred_logits": logits,
        "pred_boxes": box_convert(boxes, "cxcywh", "xyxy"),
        "presence_logits": presence,
        "pred_masks": masks,
    }


def test_perfect_predictions_score_far_below_wrong_ones():
    loss = Sam3Loss()
    good = loss(_predictions(True), _targets())
    bad = loss(_predictions(False), _targets())
    for key in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_presence"):
        assert good[key].item() < 1e-2, key
        assert bad[key].item() > 10 * good[key].item() + 0.05, key
    assert good["loss_ce"].item() < bad["loss_ce"].item()
    assert good["total"].item() < 0.2 * bad["total"].item()
    assert set(good) == {
        "loss_ce",
        "loss_presence",
        "loss_bbox",
        "loss_giou",
        "loss_mask",
        "loss_dice",
        "loss_ce_aux",
        "loss_presence_aux",
        "loss_bbox_aux",
        "loss_giou_aux",
        "total",
    }
    for value in good.values():
        assert value.dtype == torch.float32 and value.dim() == 0


def test_total_is_the_weighted_sum():
    w = LossWeights(loss_ce=1, loss_presence=2, loss_bbox=3, loss_giou=4, loss_mask=5, loss_dice=6)
    out = Sam3Loss(weights=w)(_predictions(False), _targets())
    expected = sum(
        getattr(w, k) * (out[k] + out.get(f"{k}_aux", 0.0))
        for k in ("loss_ce", "loss_presence", "loss_bbox", "loss_giou")
    )
    expected = expected + 5 * out["loss_mask"] + 6 * out["loss_dice"]
    torch.testing.assert_close(out["total"], expected)


def test_negative_only_batch_has_no_box_or_mask_loss():
    full = _predictions(False, layers=2)  # row 1: a negative prompt with confident false detections
    preds = {k: (v[1:2] if k == "pred_masks" else v[:, 1:2]).clone() for k, v in full.items()}
    for p in preds.values():
        p.requires_grad_(True)
    negative = [_targets()[1]]
    out = Sam3Loss()(preds, negative)
    for key in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_bbox_aux", "loss_giou_aux"):
        assert out[key].item() == 0.0, key
    assert out["loss_ce"].item() == 0.0  # SAM3: class term off for absent concepts, presence decides
    assert out["loss_presence"].item() > 1.0  # presence said "present"
    out["total"].backward()  # graph stays connected even with nothing matched
    assert preds["presence_logits"].grad.abs().sum() > 0
    assert preds["pred_logits"].grad.abs().sum() == 0

    strict = Sam3Loss(absent_class_loss=True)(preds, negative)
    assert strict["loss_ce"].item() > 0.1  # the confident false detections are penalised


def test_aux_layers_and_last_layer_only_input():
    preds = _predictions(False, layers=3)
    with_aux = Sam3Loss()(preds, _targets())
    assert with_aux["loss_bbox_aux"].item() == pytest.approx(2 * with_aux["loss_bbox"].item(), rel=1e-5)
    last_only = {k: (v if k == "pred_masks" else v[-1]) for k, v in preds.items()}
    plain = Sam3Loss()(last_only, _targets())
    assert plain["loss_bbox_aux"].item() == 0.0
    torch.testing.assert_close(plain["loss_bbox"], with_aux["loss_bbox"])
    no_aux = Sam3Loss(aux_loss=False)(preds, _targets())
    torch.testing.assert_close(no_aux["total"], plain["total"])


def test_gradients_flow_to_every_prediction():
    preds = {k: v.clone().requires_grad_(True) for k, v in _predictions(False).items()}
    out = Sam3Loss(class_loss="focal")(preds, _targets())
    out["total"].backward()
    for key, tensor in preds.items():
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), key
        assert tensor.grad.abs().sum() > 0, key
    preds = {k: v.clone().requires_grad_(True) for k, v in _predictions(True).items()}
    Sam3Loss()(preds, _targets())["total"].backward()
    assert all(torch.isfinite(t.grad).all() for t in preds.values())


def test_masks_resized_and_box_only_instances_skipped():
    preds = _predictions(True)
    targets = _targets()
    big = torch.nn.functional.interpolate(targets[0]["masks"][None], size=(32, 32), mode="nearest")[0]
    resized = Sam3Loss()(preds, [{"boxes": targets[0]["boxes"], "masks": big}, targets[1]])
    assert resized["loss_dice"].item() < 0.05
    box_only = [{**targets[0], "mask_valid": torch.tensor([False, False])}, targets[1]]
    out = Sam3Loss()(_predictions(False), box_only)
    assert out["loss_mask"].item() == 0.0 and out["loss_dice"].item() == 0.0
    assert out["loss_bbox"].item() > 0


def test_bf16_autocast_matches_float32():
    preds = _predictions(False)
    reference = Sam3Loss()(preds, _targets())
    half = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in preds.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Sam3Loss()(half, _targets())
    out["total"].backward()
    assert out["total"].dtype == torch.float32
    torch.testing.assert_close(out["total"], reference["total"], rtol=3e-2, atol=1e-2)
    assert all(torch.isfinite(t.grad.float()).all() for t in half.values())


def test_bad_shapes_are_rejected():
    preds = _predictions(True)
    with pytest.raises(ValueError, match="targets"):
        Sam3Loss()(preds, _targets()[:1])
    with pytest.raises(ValueError, match="presence_logits"):
        Sam3Loss()({**preds, "presence_logits": preds["presence_logits"][..., 0]}, _targets())
    with pytest.raises(ValueError):
        Sam3Loss(class_loss="softmax")


# --------------------------------------------------------------------------- tiny Sam3Model


def _tiny_model():
    from transformers import Sam3Config, Sam3Model

    cfg = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=112,
                patch_size=14,
                window_size=4,
                global_attn_indexes=[1],
                pretrain_image_size=112,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(
            hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64, roi_size=3
        ),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(
            hidden_size=32, num_layers=2, num_queries=10, num_attention_heads=2, intermediate_size=64
        ),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    return Sam3Model(cfg)


def _tiny_dataset(tmp_path: Path) -> CocoConceptDataset:
    images, annotations = [], []
    for i in range(2):
        img = Image.new("RGB", (64, 48), (10, 10, 10))
        draw = ImageDraw.Draw(img)
        draw.rectangle([8 + 20 * i, 8, 23 + 20 * i, 31], fill=(220, 60, 60))
        draw.ellipse([40 - 20 * i, 20, 55 - 20 * i, 40], fill=(60, 220, 60))
        img.save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        x0 = 8 + 20 * i
        annotations.append(
            {
                "id": 10 + i,
                "image_id": i + 1,
                "category_id": 1,
                "segmentation": [[x0, 8, x0 + 16, 8, x0 + 16, 32, x0, 32]],
            }
        )
        if i == 0:
            annotations.append(
                {
                    "id": 20,
                    "image_id": 1,
                    "category_id": 2,
                    "bbox": [40, 20, 16, 21],
                    "segmentation": [[40, 20, 56, 20, 56, 41, 40, 41]],
                }
            )
    categories = [{"id": 1, "name": "tumor"}, {"id": 2, "name": "cyst"}, {"id": 3, "name": "liver"}]
    annotations.append({"id": 30, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10]})  # box-only
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoConceptDataset(path, tmp_path, resolution=112, mask_resolution=32, num_negatives=2, seed=0)


def test_tiny_sam3_end_to_end_with_aux_layers(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model().train()
    batch = collate([_tiny_dataset(tmp_path)[i] for i in range(2)])
    n = len(batch["queries"])
    assert batch["is_negative"].any() and not batch["is_negative"].all()

    # The trainer's recipe: one row per query, its image's pixels, a tokenised prompt (random
    # ids here) and the geometry-CLS padding box.
    rng = np.random.default_rng(0)
    input_ids = torch.as_tensor(rng.integers(1, 100, size=(n, 32)))
    attention_mask = torch.zeros(n, 32, dtype=torch.long)
    attention_mask[:, :5] = 1
    with DecoderLayerCapture(model) as capture:
        outputs = model(
            pixel_values=batch["pixel_values"][batch["query_image_index"]],
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_boxes=torch.tensor([[0.5, 0.5, 0.1, 0.1]]).expand(n, 1, 4),
            input_boxes_labels=torch.full((n, 1), -10, dtype=torch.long),
        )
    predictions = capture.predictions(outputs)
    layers = model.config.detr_decoder_config.num_layers
    assert predictions["pred_logits"].shape == (layers, n, 10)
    assert predictions["pred_boxes"].shape == (layers, n, 10, 4)
    assert predictions["presence_logits"].shape == (layers, n, 1)
    assert predictions["pred_masks"].shape == (n, 10, 32, 32)
    torch.testing.assert_close(predictions["pred_logits"][-1], outputs.pred_logits)
    torch.testing.assert_close(predictions["pred_boxes"][-1], outputs.pred_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(predictions["presence_logits"][-1], outputs.presence_logits)

    losses = Sam3Loss()(predictions, batch["queries"])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce_aux"].item() > 0 and losses["loss_bbox_aux"].item() > 0
    losses["total"].backward()

    for name, param in model.named_parameters():
        if name.startswith(("detr_decoder.", "dot_product_scoring.")) and param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
    decoder_grads = [p.grad.abs().sum() for n_, p in model.named_parameters() if n_.startswith("detr_decoder.")]
    assert all(g > 0 for g in decoder_grads)

    # A capture used outside its forward is refused rather than silently stale.
    with DecoderLayerCapture(model) as other:
        pass
    with pytest.raises(RuntimeError):
        other.predictions(outputs)
