"""Every place medsam3 reaches into transformers below its public API, checked by behaviour.

transformers may rename or change these in any release (pyproject bounds it below the next major
version). Each test fails with a message naming the transformers name and the medsam3 code that
relies on it, so an upgrade that breaks one is found here, not as a silent change in results:

- ``modeling_sam3_video._load_cv_utils_kernel_once`` / ``cv_utils_kernel`` (patched):
  medsam3/inference/video/kernels.py installs CPU stand-ins for the hub kernel. transformers
  swallows any exception from the kernel and then skips NMS and hole filling, so a signature
  mismatch would go unnoticed without these tests.
- ``GradientCheckpointingLayer._gradient_checkpointing_func`` (set): medsam3/train/setup.py.
- ``modeling_sam3.Sam3DetrDecoder`` / ``Sam3DotProductScoring`` / ``inverse_sigmoid`` and the
  decoder's output fields: medsam3/train/loss.py (DecoderLayerCapture).
- ``modeling_sam3.Sam3VisionEncoderOutput`` rebuilt from two fields: medsam3/inference/predictor.py.
- ``Sam3VideoModel`` calling ``detector_model`` with keyword ``vision_embeds`` (a forward pre-hook
  adds the geometry CLS) and the streaming session's per-frame tables (pruned):
  medsam3/inference/video/predictor.py.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import transformers


def _private(module, name: str, used_by: str):
    assert hasattr(module, name), (
        f"transformers {transformers.__version__} has no {module.__name__}.{name}; {used_by} relies on it: "
        "adapt that code (or bound transformers below this version in pyproject.toml)"
    )
    return getattr(module, name)


# ------------------------------------------------------------------------------------------ video kernels
@pytest.fixture
def video_module(monkeypatch):
    from transformers.models.sam3_video import modeling_sam3_video as module

    used_by = "medsam3/inference/video/kernels.py"
    load = _private(module, "_load_cv_utils_kernel_once", used_by)
    _private(module, "cv_utils_kernel", used_by)
    assert not [p for p in inspect.signature(load).parameters.values() if p.default is p.empty], (
        f"{module.__name__}._load_cv_utils_kernel_once now takes arguments; {used_by} calls it without"
    )
    monkeypatch.setattr(module, "cv_utils_kernel", None)  # "not attempted yet"; restored afterwards
    return module


def _install_stand_ins(module):
    from medsam3.inference.video.kernels import ensure_postprocess_kernels

    which = ensure_postprocess_kernels()
    if which != "medsam3 CPU stand-ins":
        pytest.skip(f"the hub kernel loaded ({which}); the stand-ins are not in use")
    return module.cv_utils_kernel


def test_video_nms_runs_on_our_stand_in(video_module):
    """transformers' mask NMS calls ``cv_utils_kernel.generic_nms`` the way the stand-in expects."""
    _install_stand_ins(video_module)
    nms_masks = _private(video_module, "nms_masks", "the check of medsam3's generic_nms stand-in")
    masks = torch.zeros(3, 16, 16)
    masks[0, 2:10, 2:10] = 1
    masks[1, 3:10, 2:10] = 1  # overlaps mask 0 almost entirely, lower score: suppressed
    masks[2, 12:16, 12:16] = 1
    keep = nms_masks(torch.tensor([0.9, 0.8, 0.7]), masks, prob_threshold=0.5, iou_threshold=0.5)
    assert keep.tolist() == [True, False, True], (
        "transformers' nms_masks did not suppress the overlapping mask with medsam3's generic_nms installed: it "
        "swallows kernel errors, so the stand-in's signature (medsam3/inference/video/kernels.py) no longer "
        "matches how transformers calls cv_utils_kernel.generic_nms"
    )


def test_video_hole_filling_runs_on_our_stand_in(video_module):
    """transformers' hole filling calls ``cv_utils_kernel.cc_2d`` the way the stand-in expects."""
    _install_stand_ins(video_module)
    fill = _private(video_module, "fill_holes_in_mask_scores", "the check of medsam3's cc_2d stand-in")
    scores = torch.full((1, 1, 16, 16), -5.0)
    scores[0, 0, 2:12, 2:12] = 5.0
    scores[0, 0, 6, 6] = -5.0  # a one-pixel hole in the object
    scores[0, 0, 14, 14] = 5.0  # a one-pixel sprinkle outside it
    out = fill(scores, max_area=4)
    assert out[0, 0, 6, 6] > 0 and out[0, 0, 14, 14] < 0, (
        "transformers' fill_holes_in_mask_scores neither filled the hole nor removed the sprinkle with medsam3's "
        "cc_2d installed: it swallows kernel errors, so the stand-in's signature "
        "(medsam3/inference/video/kernels.py) no longer matches how transformers calls cv_utils_kernel.cc_2d"
    )


# ------------------------------------------------------------------------------------------ checkpointing
def test_gradient_checkpointing_layers_call_the_function_we_set():
    from transformers.modeling_layers import GradientCheckpointingLayer

    from medsam3.train.setup import enable_gradient_checkpointing

    class Layer(GradientCheckpointingLayer):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(x).relu()

    model = torch.nn.Sequential(Layer(), torch.nn.Linear(4, 1))
    assert enable_gradient_checkpointing(model) == 1
    calls = []
    set_func = _private(model[0], "_gradient_checkpointing_func", "medsam3/train/setup.py")

    def spy(*args, **kwargs):
        calls.append(1)
        return set_func(*args, **kwargs)

    model[0]._gradient_checkpointing_func = spy
    x = torch.randn(3, 4, requires_grad=True)
    model.train()(x).sum().backward()
    assert calls == [1], (
        "transformers' GradientCheckpointingLayer no longer calls the `_gradient_checkpointing_func` that "
        "medsam3/train/setup.py sets: training with gradient_checkpointing would silently not checkpoint"
    )
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------ SAM3 internals
def test_the_detr_decoder_internals_the_loss_reads(tiny_checkpoint):
    from transformers import Sam3Model
    from transformers.models.sam3 import modeling_sam3

    used_by = "medsam3/train/loss.py (DecoderLayerCapture)"
    decoder_cls = _private(modeling_sam3, "Sam3DetrDecoder", used_by)
    _private(modeling_sam3, "Sam3DotProductScoring", used_by)
    inverse_sigmoid = _private(modeling_sam3, "inverse_sigmoid", used_by)
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.25, 0.5])), torch.tensor([0.25, 0.5]).logit())

    model = Sam3Model.from_pretrained(tiny_checkpoint).eval()
    (decoder,) = [m for m in model.modules() if isinstance(m, decoder_cls)]
    _private(decoder, "box_head", used_by)
    seen = []
    handle = decoder.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model(
            pixel_values=torch.zeros(1, 3, 112, 112),
            input_ids=torch.ones(1, 32, dtype=torch.long),
            attention_mask=torch.ones(1, 32, dtype=torch.long),
        )
    handle.remove()
    (out,) = seen
    layers = model.config.detr_decoder_config.num_layers
    for field in ("intermediate_hidden_states", "reference_boxes", "presence_logits"):
        value = getattr(out, field, None)
        assert isinstance(value, torch.Tensor) and value.shape[0] == layers, (
            f"Sam3DetrDecoder's output has no per-layer `{field}` (transformers {transformers.__version__}); "
            f"{used_by} reads it"
        )


def test_vision_features_rebuilt_from_two_fields_predict_the_same(tiny_checkpoint):
    """The Predictor re-batches ``Sam3VisionEncoderOutput`` keeping only the FPN features and positions."""
    from transformers import Sam3Model
    from transformers.models.sam3 import modeling_sam3

    from medsam3.inference.predictor import select_vision

    _private(modeling_sam3, "Sam3VisionEncoderOutput", "medsam3/inference/predictor.py")
    model = Sam3Model.from_pretrained(tiny_checkpoint).eval()
    torch.manual_seed(0)
    prompt = dict(input_ids=torch.randint(1, 100, (1, 32)), attention_mask=torch.ones(1, 32, dtype=torch.long))
    with torch.no_grad():
        vision = model.get_vision_features(pixel_values=torch.randn(1, 3, 112, 112))
        full = model(vision_embeds=vision, **prompt)
        rebuilt = model(vision_embeds=select_vision(vision, [0]), **prompt)
    for field in ("pred_logits", "pred_masks", "presence_logits"):
        assert torch.equal(getattr(rebuilt, field), getattr(full, field)), (
            f"Sam3Model's forward reads more of Sam3VisionEncoderOutput than fpn_hidden_states and "
            f"fpn_position_encoding, which select_vision in medsam3/inference/predictor.py keeps ({field} differs)"
        )


# ------------------------------------------------------------------------------------------ video model
def test_the_video_model_calls_its_detector_as_the_geometry_hook_expects(tiny_video_checkpoint):
    from transformers import Sam3VideoModel, Sam3VideoProcessor

    from medsam3.inference.video import VideoPredictor

    used_by = "medsam3/inference/video/predictor.py"
    model = Sam3VideoModel.from_pretrained(tiny_video_checkpoint)
    processor = Sam3VideoProcessor.from_pretrained(tiny_video_checkpoint)
    vp = VideoPredictor(model, processor, device="cpu", threshold=0.0, memory_frames=1)
    calls = []
    spy = model.detector_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True
    )
    frames = [np.full((40, 56, 3), 30 + 40 * i, np.uint8) for i in range(4)]
    list(vp.track(frames, ["liver"]))
    spy.remove()
    assert calls, f"Sam3VideoModel no longer calls `detector_model`; {used_by} hooks it for the geometry CLS"
    assert all("vision_embeds" in c and c.get("input_boxes") is not None for c in calls), (
        "Sam3VideoModel calls `detector_model` without keyword `vision_embeds`, so the geometry hook in "
        f"{used_by} no longer adds the padding box: video detections would silently differ from images"
    )
    session = vp.session
    for table in (
        "processed_frames",
        "output_dict_per_obj",
        "frames_tracked_per_obj",
        "mask_inputs_per_obj",
        "obj_id_to_tracker_score_frame_wise",
        "suppressed_obj_ids",
        "unmatched_frame_inds",
        "overlap_pair_to_frame_inds",
    ):
        assert isinstance(getattr(session, table, None), dict), (
            f"Sam3VideoInferenceSession has no dict `{table}`; VideoPredictor._prune in {used_by} bounds it"
        )
    for per_obj in session.output_dict_per_obj.values():
        assert set(per_obj) >= {"cond_frame_outputs", "non_cond_frame_outputs"}, (
            f"the session's per-object outputs changed shape ({sorted(per_obj)}); VideoPredictor._prune reads them"
        )
        oldest_kept = len(frames) - 1 - vp.memory_frames
        assert min(per_obj["non_cond_frame_outputs"], default=oldest_kept) >= oldest_kept, (
            "VideoPredictor._prune no longer drops old tracker outputs from the session"
        )
