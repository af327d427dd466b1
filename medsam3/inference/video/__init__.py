"""Video and volume propagation on transformers' SAM3 video model (detector + tracker).

- :mod:`.predictor`: :class:`VideoPredictor`, text prompts -> tracked objects per frame, streamed,
  memory bounded; the detector gets the image Predictor's geometry CLS.
- :mod:`.propagate`: volumes as slice sequences, tracked both ways from the most confident slice.
- :mod:`.run`: a video or volume file in, the output files out (what the CLI calls).
- :mod:`.kernels`: CPU stand-ins for the hub kernel behind the video model's mask NMS.

May import: :mod:`medsam3.adapters` (lazily, to load models), :mod:`medsam3.model`,
:mod:`medsam3.config`, the leaves (:mod:`medsam3.io`, :mod:`medsam3.outputs`) and
:mod:`medsam3.inference.predictor` (shared prompt geometry).
"""

from .predictor import FrameTracks, VideoPredictor

__all__ = ["FrameTracks", "VideoPredictor"]
