"""SAM3's video model (transformers' ``Sam3VideoModel``): the image detector plus a SAM2-style tracker.

``Sam3VideoModel.detector_model`` *is* a ``Sam3Model`` with the same module names as the image
model, so LoRA adapters load on it unchanged. The tracker has no vision encoder of its own: it
reads the detector's ViT features through its own ``tracker_neck``.
"""

from __future__ import annotations

from transformers import Sam3VideoConfig, Sam3VideoModel, Sam3VideoProcessor

from ..config import ModelConfig
from .sam3 import ModelLoadError, _load_error, _source

__all__ = ["load_video_base_model"]


def load_video_base_model(
    model_cfg: ModelConfig, local_files_only: bool = False
) -> tuple[Sam3VideoModel, Sam3VideoProcessor]:
    """SAM3 video model + processor from ``model.name`` (a ``sam3_video`` checkpoint such as facebook/sam3)."""
    source, is_local, kwargs = _source(model_cfg, local_files_only)
    try:
        config = Sam3VideoConfig.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _load_error(source, is_local, exc) from exc
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{source!r}: not a SAM3 video checkpoint ({exc})") from exc
    if config.model_type != "sam3_video" or getattr(config, "tracker_config", None) is None:
        raise ModelLoadError(
            f"{source!r} is a {config.model_type!r} checkpoint without SAM3's tracker; video and --propagate need "
            f"the full SAM3 release (facebook/sam3, model_type sam3_video), not an image-only or merged model"
        )
    if model_cfg.resolution is not None:
        config.image_size = model_cfg.resolution  # propagates to the detector and the tracker
    try:
        model = Sam3VideoModel.from_pretrained(source, config=config, **kwargs)
        processor = Sam3VideoProcessor.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _load_error(source, is_local, exc) from exc
    if model_cfg.resolution is not None:
        processor.image_processor.size = {"height": model_cfg.resolution, "width": model_cfg.resolution}
        processor.video_processor.size = {"height": model_cfg.resolution, "width": model_cfg.resolution}
        processor.target_size = model_cfg.resolution
    return model.eval(), processor
