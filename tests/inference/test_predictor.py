"""Predictor on a tiny random SAM3 loaded from disk like a real checkpoint."""

import numpy as np
import pytest
import torch
from transformers import Sam3Model, Sam3Processor

from medsam3.inference.predictor import PAD_LABEL, Predictor

PROMPTS = ["liver", "tumor", "kidney", "spleen", "lesion", "left lung", "heart", "liver tumor"]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    torch.manual_seed(0)
    model = Sam3Model.from_pretrained(tiny_checkpoint)
    return Predictor(model, Sam3Processor.from_pretrained(tiny_checkpoint), device="cpu", prompt_batch_size=16)


def assert_same(a, b, tol=1e-4):
    assert a.prompt == b.prompt
    assert len(a) == len(b)
    np.testing.assert_allclose(a.scores, b.scores, atol=tol)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=tol * 1000)  # pixels: 1e-4 of a ~100 px image
    assert (a.masks != b.masks).mean() < 1e-3


def test_outputs_at_original_resolution(predictor, rgb_image):
    predictor.set_image(rgb_image)
    (det,) = predictor.predict("liver", threshold=0.0, nms_iou=None)
    h, w = rgb_image.shape[:2]
    n = len(det)  # every query of 16 whose mask is not empty
    assert 0 < n <= 16 and det.masks.shape == (n, h, w) and det.masks.dtype == bool
    assert det.boxes.shape == (n, 4) and det.masks.any(axis=(1, 2)).all()
    assert (det.boxes[:, [0, 2]] <= w).all() and (det.boxes[:, [1, 3]] <= h).all()
    assert np.all(np.diff(det.scores) <= 0), "detections are sorted by score"


def test_eight_prompts_in_one_call_equal_eight_single_calls(predictor, rgb_image):
    predictor.set_image(rgb_image)
    batched = predictor.predict(PROMPTS, threshold=0.0, nms_iou=None)
    predictor.clear_cache()
    singles = [predictor.predict([p], threshold=0.0, nms_iou=None)[0] for p in PROMPTS]
    for a, b in zip(batched, singles):
        assert_same(a, b)
    # Different prompts give different answers, so the comparison above can fail.
    assert np.abs(batched[0].scores - batched[1].scores).max() > 1e-6


def test_batched_equals_full_forward(predictor, rgb_image):
    """Cached vision features and text cut to its own length give what plain padded forwards give.

    Prompts of different token lengths share one batch, so each is padded to the longest and
    masked: the padded full forward (32 tokens, as Sam3Processor gives) must agree.
    """
    prompts = ["kidney", "left lung", "liver tumor in segment four"]
    lengths = [int(predictor.processor(text=[p], return_tensors="pt")["attention_mask"].sum()) for p in prompts]
    assert len(set(lengths)) == len(prompts), f"prompts must differ in token length, got {lengths}"
    predictor.set_image(rgb_image)
    predictor.clear_cache()
    dets = predictor.predict(prompts, threshold=0.0, nms_iou=None)
    for prompt, det in zip(prompts, dets):
        inputs = predictor.processor(images=rgb_image, text=[prompt], return_tensors="pt")
        assert inputs["input_ids"].shape[1] == 32
        with torch.no_grad():
            out = predictor.model(
                pixel_values=inputs["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                input_boxes=torch.tensor([[[0.5, 0.5, 0.1, 0.1]]]),
                input_boxes_labels=torch.tensor([[PAD_LABEL]]),
            )
        scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]
        shown = (out.pred_masks[0] > 0).flatten(1).any(dim=1)  # a query with an empty mask is no detection
        np.testing.assert_allclose(det.scores, np.sort(scores[shown].numpy())[::-1], atol=1e-5)


def test_padding_box_equals_explicit_geometry_cls(predictor, rgb_image, monkeypatch):
    """The padding box is invisible: same result as running the geometry encoder on the CLS alone."""
    predictor.set_image(rgb_image)
    padded = predictor.predict(PROMPTS[:3], threshold=0.0, nms_iou=None)

    encoder = predictor.model.geometry_encoder
    original = encoder.forward
    calls = []

    def cls_only(box_embeddings, box_mask, box_labels, img_feats, img_pos_embeds=None):
        assert not box_mask.any(), "text-only prompts must carry only padding boxes"
        calls.append(box_embeddings.shape)
        empty = box_embeddings[:, :0]
        return original(empty, box_mask[:, :0], box_labels[:, :0], img_feats, img_pos_embeds)

    monkeypatch.setattr(encoder, "forward", cls_only)
    explicit = predictor.predict(PROMPTS[:3], threshold=0.0, nms_iou=None)
    assert calls, "the geometry encoder must run for text-only prompts"
    for a, b in zip(padded, explicit):
        assert_same(a, b)
    monkeypatch.setattr(encoder, "forward", original)


def test_geometry_cls_changes_the_answer(predictor, rgb_image):
    """Without the CLS path (no boxes at all) SAM3 answers differently: the padding box matters."""
    predictor.set_image(rgb_image)
    vision, sizes = predictor.encode_images([rgb_image])
    no_box = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    with torch.no_grad():
        (raw,) = predictor.raw_outputs(vision, sizes, [(0, "liver", no_box)])  # with the padding box
    inputs = predictor.processor(images=rgb_image, text=["liver"], return_tensors="pt")
    with torch.no_grad():
        out = predictor.model(**{k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask")})
    without = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]
    assert (raw.scores - without).abs().max() > 1e-4


def test_exemplar_boxes_per_prompt(predictor, rgb_image):
    predictor.set_image(rgb_image)
    box = [20, 20, 60, 60]
    mixed = predictor.predict(["liver", "tumor"], boxes=[[box], None], threshold=0.0, nms_iou=None)
    alone_box = predictor.predict(["liver"], boxes=[box], threshold=0.0, nms_iou=None)[0]
    alone_text = predictor.predict(["tumor"], threshold=0.0, nms_iou=None)[0]
    assert_same(mixed[0], alone_box)
    assert_same(mixed[1], alone_text)
    text_only = predictor.predict(["liver"], threshold=0.0, nms_iou=None)[0]
    assert np.abs(text_only.scores - alone_box.scores).max() > 1e-6, "the box must reach the model"
    negative = predictor.predict(["liver"], boxes=[box], box_labels=[0], threshold=0.0, nms_iou=None)[0]
    assert np.abs(negative.scores - alone_box.scores).max() > 1e-6, "negative label must differ from positive"


def test_threshold_and_nms(predictor, rgb_image):
    predictor.set_image(rgb_image)
    (everything,) = predictor.predict(["liver"], threshold=0.0, nms_iou=None)
    cut = float(np.median(everything.scores))
    (above,) = predictor.predict(["liver"], threshold=cut, nms_iou=None)
    assert len(above) == int((everything.scores > cut).sum())
    (nmsed,) = predictor.predict(["liver"], threshold=0.0, nms_iou=0.3)
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(nmsed.boxes), torch.from_numpy(nmsed.boxes)).fill_diagonal_(0)
    assert len(nmsed) < len(everything) and float(iou.max()) <= 0.3 + 1e-6


def test_predict_images_batches_vision_like_set_image(predictor, rgb_image):
    other = np.ascontiguousarray(rgb_image[::-1])
    batch = predictor.predict_images([rgb_image, other], ["liver", "tumor"], threshold=0.0, nms_iou=None)
    for image, per_image in zip([rgb_image, other], batch):
        predictor.set_image(image)
        for a, b in zip(per_image, predictor.predict(["liver", "tumor"], threshold=0.0, nms_iou=None)):
            assert_same(a, b)


@pytest.mark.parametrize("prompts, match", [([], "no prompt"), ([""], "empty prompt"), (["  "], "empty prompt")])
def test_bad_prompts(predictor, rgb_image, prompts, match):
    predictor.set_image(rgb_image)
    with pytest.raises(ValueError, match=match):
        predictor.predict(prompts)


def test_bad_inputs(predictor, rgb_image):
    fresh = Predictor(predictor.model, predictor.processor, device="cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict("liver")
    with pytest.raises(ValueError, match="dtype float64"):
        fresh.set_image(rgb_image.astype(float))
    with pytest.raises(ValueError, match="shape"):
        fresh.set_image(np.zeros((4, 4, 7), np.uint8))
    fresh.set_image(rgb_image)
    with pytest.raises(ValueError, match="x2 > x1"):
        fresh.predict("liver", boxes=[[50, 50, 10, 10]])
    with pytest.raises(ValueError, match="2 prompts"):
        fresh.predict(["a", "b"], boxes=[[[1, 1, 5, 5]], [[1, 1, 5, 5]], [[1, 1, 5, 5]]])


def test_per_prompt_none_boxes_are_not_one_box():
    """[None] * 4 is four prompts without boxes, not one box of NaN coordinates."""
    from medsam3.inference.predictor import _normalise_boxes

    for n in (4, 2):
        rows = _normalise_boxes([None] * n, None, n)
        assert len(rows) == n and all(b.shape == (0, 4) and lab.shape == (0,) for b, lab in rows)
    rows = _normalise_boxes([None, [[1, 2, 3, 4]], None, None], [None, [0], None, None], 4)
    assert [len(b) for b, _ in rows] == [0, 1, 0, 0] and rows[1][1].tolist() == [0]
    (shared,) = _normalise_boxes([1, 2, 3, 4], None, 1)
    assert shared[0].tolist() == [[1, 2, 3, 4]]


def test_predict_images_takes_boxes(predictor, rgb_image):
    box = [20, 20, 60, 60]
    other = np.ascontiguousarray(rgb_image[:, ::-1])
    batch = predictor.predict_images(
        [rgb_image, other], ["liver", "tumor"], boxes=[[box], None], threshold=0.0, nms_iou=None
    )
    for image, per_image in zip([rgb_image, other], batch):
        predictor.set_image(image)
        expected = predictor.predict(["liver", "tumor"], boxes=[[box], None], threshold=0.0, nms_iou=None)
        for a, b in zip(per_image, expected):
            assert_same(a, b)
    text_only = predictor.predict_images([rgb_image], ["liver"], threshold=0.0, nms_iou=None)[0][0]
    assert np.abs(text_only.scores - batch[0][0].scores).max() > 1e-6, "the box must reach the model"
    assert predictor.predict_images([], ["liver"]) == []


@pytest.mark.parametrize(("name", "resolution", "cpu_rows"), [("full", 504, 2), ("full", 336, 4), ("tiny", None, 16)])
def test_prompt_batch_size_on_cpu_follows_activation_size(name, resolution, cpu_rows):
    """CPU passes hold fewer rows where the pixel decoder's activation is large; CUDA always 16."""
    from medsam3.inference.predictor import default_prompt_batch_size
    from medsam3.testing import random_sam3

    with torch.device("meta"):
        model, processor = random_sam3(name, resolution)
    assert default_prompt_batch_size(model, processor, torch.device("cpu")) == cpu_rows
    assert default_prompt_batch_size(model, processor, torch.device("cuda")) == 16
