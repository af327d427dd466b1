"""LoRA adapters on the video model: the same sources and strict rules as the image model.

The adapter goes on ``Sam3VideoModel.detector_model`` (a ``Sam3Model``, same module names), through
:func:`~medsam3.adapters.loading.load_model` itself, so MedSAM3-v1 ``.pt`` files, PEFT directories,
the hub, auto-detection and every strictness check behave exactly as for images. PEFT injects
LoRA layers in place, so the video model runs its detector with them.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..model.video import load_video_base_model
from .loading import load_model
from .plan import RunPlan

__all__ = ["load_video_model"]


def load_video_model(
    cfg: Config | None = None, weights: str | None = None, plan: RunPlan | None = None
) -> tuple[torch.nn.Module, object, str]:
    """(``Sam3VideoModel`` with the adapter on its detector, ``Sam3VideoProcessor``, adapter description)."""
    loaded = {}

    def detector_of_video_model(model_cfg, local_files_only: bool = False):
        video, processor = load_video_base_model(model_cfg, local_files_only=local_files_only)
        loaded["video"] = video
        return video.detector_model, processor

    _detector, processor, origin = load_model(cfg, weights, base_loader=detector_of_video_model, plan=plan)
    return loaded["video"].eval(), processor, origin
