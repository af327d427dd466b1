"""medsam3: text-prompted medical image segmentation on SAM3 with LoRA adapters."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Config", "Detections", "Predictor", "load_config"]


def __getattr__(name: str):
    # Lazy: `import medsam3.io` or `medsam3.evaluation.metrics` should not pay for importing transformers.
    if name in ("Config", "load_config"):
        from . import config

        return getattr(config, name)
    if name == "Predictor":
        from .inference.predictor import Predictor

        return Predictor
    if name == "Detections":
        from .inference.postprocess import Detections

        return Detections
    raise AttributeError(f"module 'medsam3' has no attribute {name!r}")
