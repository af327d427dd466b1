"""VideoPredictor: text prompts in, tracked objects with stable ids out, frame by frame.

A thin driver of transformers' ``Sam3VideoModel`` / ``Sam3VideoProcessor`` in *streaming* mode
(one ``model(inference_session, frame=...)`` call per frame), with three things added:

- **Geometry CLS.** The video model calls its detector with text only; a forward pre-hook gives
  it the same padding box the image :class:`~medsam3.inference.Predictor` uses (docs/architecture.md,
  "Geometry CLS"), so the detector's outputs on a frame equal the image Predictor's, and
  MedSAM3-v1 runs as it was trained. Exemplar boxes on one chosen frame go in the same way.
- **Bounded memory.** A streaming session keeps every frame's pixels, tracker outputs and
  per-frame metadata forever (transformers 5.24; one 1008 px frame is 12 MB of pixels alone).
  After each frame, state older than ``memory_frames`` frames is dropped: the tracker reads at
  most ``num_maskmem`` (7) memories and ``max_object_pointers_in_encoder`` (16) object pointers
  back, so with the default window of 16 nothing it reads is lost; of conditioning frames (new
  detections, re-conditioning) the newest ``max_cond_frame_num`` (4, all the memory attention
  selects) are kept.
- **Offline post-processing.** Mask NMS and hole filling run even without the hub kernel
  (:mod:`.kernels`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...adapters.plan import RunPlan
from ...config import Config
from ...errors import UserError
from ...model import resolve_device
from ..predictor import normalised_cxcywh, padding_geometry
from .kernels import ensure_postprocess_kernels

__all__ = ["FrameTracks", "VideoPredictor"]

logger = logging.getLogger(__name__)


@dataclass
class FrameTracks:
    """The tracked objects on one frame (N may be 0: an empty frame is a result)."""

    frame_index: int
    object_ids: np.ndarray  # (N,) int64, stable over the whole video
    prompts: list[str]  # (N,) the prompt that found each object
    scores: np.ndarray  # (N,) float32 detection score of the object
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    masks: np.ndarray  # (N, H, W) bool, original frame size

    def __len__(self) -> int:
        return len(self.object_ids)


def _box_geometry(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel xyxy exemplar boxes -> SAM3's normalised cxcywh for one prompt row."""
    cxcywh = normalised_cxcywh(boxes, size)
    return cxcywh[None], torch.as_tensor(labels, dtype=torch.long).reshape(1, -1)


class VideoPredictor:
    """Tracks every instance of each text prompt through a stream of RGB frames.

    >>> vp = VideoPredictor.from_config(load_config("configs/full_lora_config.yaml"), weights="lal-Joey/MedSAM3_v1")
    >>> for tracks in vp.track(open_video("clip.mp4").frames(), ["polyp"]):
    ...     tracks.object_ids, tracks.masks.shape
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        new_object_threshold: float | None = None,
        memory_frames: int = 16,
        precision: str = "auto",
    ):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        tracker_cfg = self.model.config.tracker_config
        needed = max(tracker_cfg.num_maskmem, tracker_cfg.max_object_pointers_in_encoder)
        if memory_frames < needed:
            logger.warning(
                "memory_frames=%d is below what the tracker reads back (%d frames): older memories it would use are "
                "dropped, which changes the tracks",
                memory_frames,
                needed,
            )
        self.memory_frames = memory_frames
        self.max_cond_frames = tracker_cfg.max_cond_frame_num
        self.set_thresholds(threshold, new_object_threshold)
        self.postprocess_kernels = ensure_postprocess_kernels()
        self._frame_boxes: tuple[torch.Tensor, torch.Tensor] | None = None
        previous = getattr(self.model, "_medsam3_geometry_hook", None)
        if previous is not None:  # one model, one driver: the newest VideoPredictor supplies the geometry
            previous.remove()
        self.model._medsam3_geometry_hook = self.model.detector_model.register_forward_pre_hook(
            self._geometry_hook, with_kwargs=True
        )

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        weights: str | None = None,
        device: str | None = None,
        threshold: float | None = None,
        memory_frames: int = 16,
    ) -> VideoPredictor:
        """The video model with the adapter the config (or ``weights``) names on its detector."""
        from ...adapters.plan import plan_run

        return cls.from_plan(plan_run(cfg, weights, threshold=threshold, device=device), memory_frames=memory_frames)

    @classmethod
    def from_plan(cls, plan: RunPlan, memory_frames: int = 16) -> VideoPredictor:
        """The video model a run plan names, at the plan's threshold, device and precision."""
        from ...adapters.video import load_video_model

        model, processor, origin = load_video_model(plan=plan)
        logger.info("adapter: %s", origin)
        vp = cls(
            model,
            processor,
            device=plan.device,
            threshold=plan.threshold,
            memory_frames=memory_frames,
            precision=plan.precision,
        )
        vp.adapter_origin = origin
        vp.plan = plan
        return vp

    def set_thresholds(self, threshold: float, new_object_threshold: float | None = None) -> None:
        """Detections above ``threshold`` are matched to tracks; new objects start above ``new_object_threshold``.

        SAM3's defaults are 0.5 and 0.7; by default the new-object bar is max(threshold, 0.7 of the model).
        """
        if not 0 <= threshold <= 1:
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
        new = new_object_threshold
        if new is None:
            new = max(threshold, float(self.model.config.new_det_thresh))
        self.model.score_threshold_detection = float(threshold)
        self.model.new_det_thresh = float(new)

    # -- the detector's geometry -------------------------------------------------------------
    def _geometry_hook(self, module, args, kwargs):
        """Give text-only detector calls the padding box (or this frame's exemplar boxes)."""
        if kwargs.get("input_boxes") is not None or kwargs.get("vision_embeds") is None:
            return args, kwargs
        mask = kwargs.get("attention_mask")
        rows = mask.shape[0] if mask is not None else 1
        if self._frame_boxes is not None:
            boxes, labels = (t.expand(rows, *t.shape[1:]) for t in self._frame_boxes)
        else:
            boxes, labels = padding_geometry(rows)
        kwargs["input_boxes"] = boxes.to(self.device)
        kwargs["input_boxes_labels"] = labels.to(self.device)
        return args, kwargs

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # -- sessions ------------------------------------------------------------------------------
    def new_session(self, prompts: Sequence[str]):
        """A streaming session with ``prompts`` registered (several at once; each object keeps its prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not str(p).strip() for p in prompts):
            raise UserError("give at least one non-empty prompt")
        session = self.processor.init_video_session(inference_device=self.device, dtype=torch.float32)
        self.processor.add_text_prompt(session, prompts)
        return session

    def _prune(self, session, frame_idx: int) -> None:
        """Drop session state the tracker will not read again (see the module docstring)."""
        oldest = frame_idx - self.memory_frames
        # Pixels are only read for the current frame. The keys stay (value None, a few bytes each):
        # the tracker takes len(processed_frames) as the number of frames seen when it looks back.
        if session.processed_frames and session.processed_frames.get(frame_idx) is not None:
            session.processed_frames[frame_idx] = None  # this frame is done; earlier ones were cleared before
        for out in session.output_dict_per_obj.values():
            non_cond = out["non_cond_frame_outputs"]
            for k in [k for k in non_cond if k < oldest]:
                del non_cond[k]
            cond = out["cond_frame_outputs"]
            for k in sorted(cond)[: max(0, len(cond) - self.max_cond_frames)]:
                del cond[k]
        for per_obj in (session.frames_tracked_per_obj, session.mask_inputs_per_obj):
            for frames in per_obj.values():
                for k in [k for k in frames if k < oldest]:
                    del frames[k]
        for per_frame in (session.obj_id_to_tracker_score_frame_wise, session.suppressed_obj_ids):
            for k in [k for k in per_frame if k < oldest]:
                del per_frame[k]
        for table in (session.unmatched_frame_inds, session.overlap_pair_to_frame_inds):
            for key, frames in table.items():
                if frames and frames[0] < oldest:
                    table[key] = [k for k in frames if k >= oldest]

    def _frame_tracks(self, session, frame_idx: int, post: dict) -> FrameTracks:
        ids = post["object_ids"].cpu().numpy().astype(np.int64)
        return FrameTracks(
            frame_index=frame_idx,
            object_ids=ids,
            prompts=[session.prompts[session.obj_id_to_prompt_id[int(i)]] for i in ids],
            scores=post["scores"].float().cpu().numpy().astype(np.float32).reshape(-1),
            boxes=post["boxes"].float().cpu().numpy().astype(np.float32).reshape(-1, 4),
            masks=post["masks"].cpu().numpy().astype(bool),
        )

    @torch.inference_mode()
    def track(
        self,
        frames: Iterable[np.ndarray],
        prompts: str | Sequence[str],
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        box_labels: Sequence[int] | None = None,
        box_frame: int = 0,
    ) -> Iterator[FrameTracks]:
        """Yield one :class:`FrameTracks` per input frame, in order, as soon as it is computed.

        ``boxes`` (pixel xyxy, label 1 positive / 0 negative) are exemplars for every prompt on
        frame ``box_frame``; objects they find are then tracked like any other.
        """
        session = self.session = self.new_session(prompts)  # kept: callers may inspect the last run's state
        geometry = None
        if boxes is not None and len(boxes):
            labels = np.ones(len(boxes), np.int64) if box_labels is None else np.asarray(box_labels, np.int64)
            geometry = (np.asarray(boxes, np.float32).reshape(-1, 4), labels)
        for index, rgb in enumerate(frames):
            inputs = self.processor(images=rgb, return_tensors="pt")
            size = tuple(int(v) for v in rgb.shape[:2])
            self._frame_boxes = _box_geometry(*geometry, size) if geometry and index == box_frame else None
            try:
                with self._autocast():
                    out = self.model(
                        inference_session=session, frame=inputs["pixel_values"][0].to(self.device), frame_idx=index
                    )
            finally:
                self._frame_boxes = None
            post = self.processor.postprocess_outputs(session, out, original_sizes=[list(size)])
            yield self._frame_tracks(session, out.frame_idx, post)
            self._prune(session, out.frame_idx)
