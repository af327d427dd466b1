"""VideoPredictor on a tiny random SAM3 video model: stable ids, exact detector, bounded state, volumes."""

import numpy as np
import pytest
import torch
from transformers import Sam3Model, Sam3VideoModel, Sam3VideoProcessor

from medsam3.adapters.loading import load_model
from medsam3.adapters.video import load_video_model
from medsam3.inference.predictor import Predictor
from medsam3.inference.video import VideoPredictor
from medsam3.inference.video.kernels import cc_2d, generic_nms
from medsam3.inference.video.propagate import best_slice, propagate_slices
from tests.conftest import ALPHA, RANK, config_for, make_upstream_adapter


def disc_frames(n, h=90, w=120):
    """A bright disc moving right and changing size."""
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), 30, np.uint8)
        f[(yy - 45) ** 2 + (xx - 25 - 4 * i) ** 2 < (10 + i % 4) ** 2] = 220
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def video_model(tiny_video_checkpoint):
    return Sam3VideoModel.from_pretrained(tiny_video_checkpoint), Sam3VideoProcessor.from_pretrained(
        tiny_video_checkpoint
    )


def test_every_frame_has_an_entry_and_ids_keep_their_prompt(video_model):
    model, processor = video_model
    vp = VideoPredictor(model, processor, device="cpu", threshold=0.0)
    frames = disc_frames(6)
    results = list(vp.track(frames, ["liver", "tumor"]))
    assert [r.frame_index for r in results] == list(range(6))
    prompt_of = {}
    for r in results:
        assert r.masks.shape == (len(r), 90, 120) and r.masks.dtype == bool
        assert r.boxes.shape == (len(r), 4) and r.scores.shape == (len(r),)
        for oid, prompt in zip(r.object_ids.tolist(), r.prompts):
            assert prompt_of.setdefault(oid, prompt) == prompt  # an id never changes prompt
    assert set(prompt_of.values()) == {"liver", "tumor"}
    first, last = set(results[0].object_ids.tolist()), set(results[-1].object_ids.tolist())
    assert first and first <= last  # objects found on frame 0 are still tracked, under the same ids


def test_pruned_state_stays_bounded_and_tracks_are_unchanged(video_model):
    """Dropping state the tracker never reads again changes nothing, and the session stops growing."""
    model, processor = video_model
    frames = disc_frames(24)
    pruned = VideoPredictor(model, processor, device="cpu", threshold=0.0, memory_frames=16)
    a = list(pruned.track(frames, ["liver"]))
    session = pruned.session
    kept = [len(o["non_cond_frame_outputs"]) for o in session.output_dict_per_obj.values()]
    assert kept and max(kept) <= 17
    assert sum(v is not None for v in session.processed_frames.values()) == 0
    assert len(session.obj_id_to_tracker_score_frame_wise) <= 17
    full = VideoPredictor(model, processor, device="cpu", threshold=0.0, memory_frames=10**6)
    b = list(full.track(frames, ["liver"]))
    assert len(full.session.output_dict_per_obj[0]["non_cond_frame_outputs"]) > 17  # the control did grow
    for x, y in zip(a, b):
        assert x.object_ids.tolist() == y.object_ids.tolist()
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_allclose(x.scores, y.scores)


def test_adapter_on_video_detector_equals_image_predictor(tmp_path, tiny_video_checkpoint):
    """A MedSAM3-v1-format .pt on the video model's detector: same scores and boxes as the image Predictor."""
    state = make_upstream_adapter(Sam3Model.from_pretrained(tiny_video_checkpoint))
    pt = tmp_path / "best_lora_weights.pt"
    torch.save(state, pt)
    cfg = config_for(tmp_path, tiny_video_checkpoint)
    image_model, image_processor, _ = load_model(cfg, str(pt))
    video, processor, origin = load_video_model(cfg, str(pt))
    assert origin == str(pt)
    lora_layers = [n for n, _ in video.detector_model.named_modules() if n.endswith("lora_A")]
    image_lora = [n for n, _ in image_model.named_modules() if n.endswith("lora_A")]
    assert lora_layers and len(lora_layers) == len(image_lora)  # the adapter landed on the detector, all of it
    assert not [n for n, _ in video.tracker_model.named_modules() if "lora_" in n]

    captured = []
    hook = video.detector_model.register_forward_hook(lambda m, a, out: captured.append(out))
    frame = disc_frames(1)[0]
    vp = VideoPredictor(video, processor, device="cpu", threshold=0.5)
    list(vp.track([frame], ["liver", "tumor"]))
    hook.remove()
    assert len(captured) == 2  # one detector call per prompt on the frame

    predictor = Predictor(image_model, image_processor, device="cpu")
    predictor.set_image(frame)
    rows = [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * 2
    ref = predictor.forward_rows(predictor._vision, [0, 0], ["liver", "tumor"], rows, [predictor.image_size])
    for i, out in enumerate(captured):
        got = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
        want = ref.pred_logits[i : i + 1].sigmoid() * ref.presence_logits[i : i + 1].sigmoid()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.pred_boxes, ref.pred_boxes[i : i + 1], atol=1e-4, rtol=0)
    # Without the adapter the detector's scores differ: the comparison above is not vacuous.
    plain = Predictor(*load_model(config_for(tmp_path, tiny_video_checkpoint), "none")[:2], device="cpu")
    plain.set_image(frame)
    base = plain.forward_rows(plain._vision, [0], ["liver"], rows[:1], [plain.image_size])
    assert (base.pred_logits - ref.pred_logits[:1]).abs().max() > 1e-3
    assert RANK and ALPHA


def test_video_detector_gets_the_geometry_cls(video_model):
    """Without the padding box the detector's logits move (docs/architecture.md): the hook must supply it."""
    model, processor = video_model
    calls = []
    VideoPredictor(model, processor, device="cpu")  # an older driver of the same model must not interfere
    vp = VideoPredictor(model, processor, device="cpu", threshold=0.5)
    hook = model.detector_model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw.get("input_boxes_labels")), with_kwargs=True
    )
    list(vp.track(disc_frames(1), ["liver"], boxes=[[10, 20, 50, 70]], box_frame=0))
    list(vp.track(disc_frames(1), ["liver"]))
    hook.remove()
    assert calls[0].tolist() == [[1]]  # the exemplar box on the chosen frame
    assert calls[1].tolist() == [[-10]]  # the padding label otherwise


def test_cpu_kernels_match_reference_computations():
    ious = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.05], [0.0, 0.05, 1.0]])
    keep = generic_nms(ious, torch.tensor([0.5, 0.9, 0.7]), 0.1)
    assert keep.tolist() == [1, 2]  # 0 overlaps the better 1
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    mask[0, 0, :2, :2] = 1
    mask[0, 0, 4:, 3:] = 1
    labels, counts = cc_2d(mask)
    assert counts[0, 0, 0, 0] == 4 and counts[0, 0, 5, 5] == 6 and counts[0, 0, 3, 3] == 0
    assert labels[0, 0, 0, 0] != labels[0, 0, 5, 5]


def test_volume_propagation_covers_every_slice_both_ways(video_model):
    model, processor = video_model
    vp = VideoPredictor(model, processor, device="cpu", threshold=0.0)
    slices = disc_frames(7)
    seen = [t.frame_index for t in propagate_slices(vp, slices, ["liver"], scan_stride=1)]
    assert sorted(seen) == list(range(7))
    start = seen[0]
    assert seen == list(range(start, 7)) + list(range(start - 1, -1, -1))
    assert best_slice({0: 0.1, 2: 0.9, 4: 0.9, 6: 0.2}) in (2, 4)
