"""What one text prompt found in one image: the type every writer, overlay and metric reads.

It lives in the ``outputs`` leaf (numpy only) so writers need not reach up into ``inference``;
the Predictor produces it (:mod:`medsam3.inference.postprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detections"]


@dataclass
class Detections:
    """What one text prompt found in one image, best score first.

    ``boxes`` are xyxy in pixels of the original image, ``masks`` boolean at its resolution.
    """

    prompt: str
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    masks: np.ndarray  # (N, H, W) bool
    unknown_concept: bool = False
    """The prompt is outside the concepts the model records (run anyway with ``--allow-unknown``)."""

    @property
    def label(self) -> str:
        """The prompt as shown to people: an unknown concept says so."""
        return f"{self.prompt} (unknown concept)" if self.unknown_concept else self.prompt

    def __len__(self) -> int:
        return len(self.scores)

    def semantic_mask(self) -> np.ndarray:
        """Union of all detections (H, W): the mask Dice is computed on."""
        return self.masks.any(axis=0) if len(self) else np.zeros(self.masks.shape[1:], dtype=bool)
